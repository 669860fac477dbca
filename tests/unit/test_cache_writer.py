"""The write-behind chunk cache: a put returns before the disk write, the chunk is served
meanwhile, and flush/close leave every chunk on disk; a layer read never waits for the disk."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from stargz.cache import DiskCache, MemoryCache, WriteBehindCache
from stargz.config import Config
from stargz.layer import Layer
from stargz.remote import FileBlobFetcher
from tests.unit.test_layer_helpers import build_blob, payload


class SlowDisk(DiskCache):
    """A real disk cache whose writes wait for ``go`` (a disk busy with something else)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 1 << 30)
        self.go = threading.Event()

    def put(self, digest: str, data: bytes) -> None:
        self.go.wait(30)
        super().put(digest, data)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_returns_before_the_disk_write_and_the_chunk_is_served_meanwhile(
        tmp_path: Path) -> None:
    disk = SlowDisk(tmp_path / "cache")
    cache = WriteBehindCache(MemoryCache(10), disk)  # memory too small to hold the chunk
    data = payload(1, 1000)
    cache.put(digest_of(data), data)  # returns although the disk is stuck
    assert cache.pending_bytes == 1000
    assert cache.peek(digest_of(data)) == data and cache.get(digest_of(data)) == data
    assert disk.get(digest_of(data)) is None
    disk.go.set()
    cache.close()
    assert cache.pending_bytes == 0
    assert DiskCache(tmp_path / "cache", 1 << 30).get(digest_of(data)) == data


def test_a_layer_read_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    built = build_blob(tmp_path, {"a.bin": payload(2, 50000)}, chunk_size=10000, level=1)
    disk = SlowDisk(tmp_path / "cache")
    cache = WriteBehindCache(MemoryCache(64 << 20), disk)

    async def go() -> bytes:
        layer = await Layer.open(FileBlobFetcher(built.path), "sha256:" + "c" * 64,
                                 built.result.toc_digest, cache, Config(no_background_fetch=True))
        return await layer.read("a.bin", 0, 1 << 20)

    assert asyncio.run(go()) == built.files["a.bin"]  # while no chunk has reached the disk
    assert len(disk) == 0 and cache.pending_bytes == 50000
    disk.go.set()
    cache.flush()
    assert len(disk) == 5
