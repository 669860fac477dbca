"""Prefetch at mount (landmarks) and the background fetch of the rest of the layer."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from stargz.cache import MemoryCache, TieredCache, cache_from_config
from stargz.config import CacheConfig, Config
from stargz.estargz.footer import estargz_footer
from stargz.estargz.reader import TAIL_READ, open_blob
from stargz.estargz.source import BytesSource
from stargz.estargz.toc import TOC_TAR_NAME
from stargz.layer import Layer, mount, mount_from_file
from stargz.remote import CountingFetcher, FileBlobFetcher, Range
from tests.unit.test_layer_helpers import (
    LAYER_DIGEST,
    Built,
    SwitchableFetcher,
    build_blob,
    payload,
)

PRIORITIZED = ("app/first.bin", "app/second.bin")


def prioritized_layer(tmp: Path) -> Built:
    files = {f"lib/f{i}.bin": payload(i, 40000) for i in range(10)}
    files["app/first.bin"] = payload(100, 30000)
    files["app/second.bin"] = payload(101, 30000)
    return build_blob(tmp, files, chunk_size=10000, level=1, prioritized=PRIORITIZED)


def plain_layer(tmp: Path) -> Built:
    files = {f"lib/f{i}.bin": payload(i, 40000) for i in range(10)}
    return build_blob(tmp, files, chunk_size=10000, level=1)


def data_requests(fetcher: CountingFetcher, size: int) -> list[list[Range]]:
    tail = [(max(0, size - TAIL_READ), size)]
    return [r for r in fetcher.requests if r != tail]


def test_prefetch_fetches_up_to_the_landmark_and_serves_reads_from_cache(tmp_path: Path) -> None:
    built = prioritized_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await mount(fetcher, LAYER_DIGEST, built.result.toc_digest,
                            TieredCache(MemoryCache(64 << 20)), Config(no_background_fetch=True))
        end = layer.prefetch_end()
        assert end > 60000  # both prioritized files come before the landmark
        fetched = data_requests(fetcher, built.result.blob_size)
        assert fetched and max(e for r in fetched for _, e in r) <= end + 100
        assert layer.stats().prefetch_complete
        assert layer.stats().fetched_prefetch > 60000
        before = len(fetcher.requests)
        for name in PRIORITIZED:
            assert await layer.read(name, 0, 1 << 20) == built.files[name]
        assert len(fetcher.requests) == before
        assert layer.stats().cache_hits == 6 and layer.stats().cache_misses == 0
        await layer.read("lib/f3.bin", 0, 10)  # not prefetched: fetched on demand
        assert len(fetcher.requests) == before + 1

    asyncio.run(go())


def test_no_prefetch_landmark_prefetches_nothing(tmp_path: Path) -> None:
    built = plain_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await mount(fetcher, LAYER_DIGEST, built.result.toc_digest,
                            TieredCache(MemoryCache(64 << 20)),
                            Config(no_background_fetch=True, prefetch_size=1 << 30))
        assert layer.prefetch_end() == 0
        assert await layer.wait_prefetch()
        assert data_requests(fetcher, built.result.blob_size) == []
        await layer.wait_background()
        assert data_requests(fetcher, built.result.blob_size) == []

    asyncio.run(go())


def test_background_fetch_caches_the_whole_layer(tmp_path: Path) -> None:
    built = prioritized_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))
    config = Config(background_batch_bytes=50000, background_quiet_sec=0)

    async def go() -> None:
        layer = await mount(fetcher, LAYER_DIGEST, built.result.toc_digest,
                            TieredCache(MemoryCache(64 << 20)), config)
        await layer.wait_background()
        stats = layer.stats()
        assert stats.background_complete
        assert stats.fetched_background > 300000
        # every chunk and the TOC: all but the directory entries' gzip members before the
        # first file (a tail read of the whole blob used to bring those along)
        toc = open_blob(BytesSource(built.path.read_bytes())).toc
        first_chunk = min(e.offset for e in toc.entries if e.type == "reg" and e.size)
        assert stats.held.covers(first_chunk, stats.size)
        before = len(fetcher.requests)
        for name, data in built.files.items():
            assert await layer.read(name, 0, 1 << 20) == data
        assert len(fetcher.requests) == before

    asyncio.run(go())


def test_background_fetch_can_be_switched_off(tmp_path: Path) -> None:
    built = plain_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await mount(fetcher, LAYER_DIGEST, built.result.toc_digest,
                            TieredCache(MemoryCache(64 << 20)), Config(no_background_fetch=True))
        await layer.wait_background()
        assert not layer.stats().background_complete
        assert layer.stats().fetched_background == 0
        assert data_requests(fetcher, built.result.blob_size) == []

    asyncio.run(go())


class GatedFetcher:
    """Holds data requests for one file's member until released (a slow registry)."""

    def __init__(self, inner: FileBlobFetcher, hold_from: int, hold_to: int) -> None:
        self._inner = inner
        self.hold = (hold_from, hold_to)
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    @property
    def size(self) -> int:
        return self._inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        if any(s >= self.hold[0] and e <= self.hold[1] for s, e in ranges):
            self.holding.set()
            await self.release.wait()
        return await self._inner.fetch(ranges)


def test_background_waits_while_an_on_demand_read_runs(tmp_path: Path) -> None:
    built = plain_layer(tmp_path)

    async def go() -> None:
        inner = FileBlobFetcher(built.path)
        probe = await Layer.open(inner, LAYER_DIGEST, built.result.toc_digest,
                                 TieredCache(MemoryCache(1 << 20)), Config())
        target = probe.blob.chunks("lib/f7.bin")[0]
        gated = GatedFetcher(inner, target.compressed_offset, target.compressed_end)
        fetcher = CountingFetcher(gated)
        layer = await Layer.open(fetcher, LAYER_DIGEST, built.result.toc_digest,
                                 TieredCache(MemoryCache(64 << 20)),
                                 Config(background_quiet_sec=0))
        opened = len(fetcher.requests)
        read = asyncio.create_task(layer.read("lib/f7.bin", 0, 100))
        await gated.holding.wait()
        assert len(fetcher.requests) == opened + 1  # the held read
        layer.start()
        assert await layer.wait_prefetch()  # nothing to prefetch: the background starts
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert len(fetcher.requests) == opened + 1  # background has not fetched meanwhile
        gated.release.set()
        assert await read == built.files["lib/f7.bin"][:100]
        await layer.wait_background()
        assert layer.stats().background_complete
        assert len(fetcher.requests) > opened + 1

    asyncio.run(go())


def test_failed_prefetch_is_reported_and_reads_recover(tmp_path: Path) -> None:
    built = prioritized_layer(tmp_path)
    switch = SwitchableFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await Layer.open(switch, LAYER_DIGEST, built.result.toc_digest,
                                 TieredCache(MemoryCache(64 << 20)),
                                 Config(no_background_fetch=True))
        switch.up = False
        layer.start()
        assert await layer.wait_prefetch()
        stats = layer.stats()
        assert not stats.prefetch_complete and "unreachable" in stats.last_error
        switch.up = True
        assert await layer.read(PRIORITIZED[0], 0, 1 << 20) == built.files[PRIORITIZED[0]]

    asyncio.run(go())


def test_close_stops_a_running_background_fetch(tmp_path: Path) -> None:
    built = plain_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await Layer.open(fetcher, LAYER_DIGEST, built.result.toc_digest,
                                 TieredCache(MemoryCache(64 << 20)),
                                 Config(background_batch_bytes=10000, max_concurrency=1))
        layer.start()
        await asyncio.sleep(0)
        await layer.close()
        await layer.wait_background()
        assert not layer.stats().background_complete
        count = len(fetcher.requests)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(fetcher.requests) == count  # nothing runs after close

    asyncio.run(go())


def without_landmarks(built: Built, tmp: Path) -> tuple[Path, str]:
    """The same blob with its landmark entries dropped from a rewritten TOC (as old stargz
    blobs are): the data is untouched, the TOC member and footer are new."""
    raw = built.path.read_bytes()
    blob = open_blob(BytesSource(raw))
    toc = json.loads(blob.toc_json)
    toc["entries"] = [e for e in toc["entries"] if not e["name"].endswith("landmark")]
    toc_json = json.dumps(toc).encode()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as out:
        info = tarfile.TarInfo(TOC_TAR_NAME)
        info.size = len(toc_json)
        out.addfile(info, io.BytesIO(toc_json))
    toc_offset = blob.footer.toc_offset
    path = tmp / "no-landmarks"
    path.write_bytes(raw[:toc_offset] + gzip.compress(tar.getvalue()) + estargz_footer(toc_offset))
    return path, "sha256:" + hashlib.sha256(toc_json).hexdigest()


def test_without_landmarks_prefetch_size_applies(tmp_path: Path) -> None:
    path, toc_digest = without_landmarks(plain_layer(tmp_path), tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(path))

    async def go() -> None:
        layer = await mount(fetcher, LAYER_DIGEST, toc_digest, TieredCache(MemoryCache(64 << 20)),
                            Config(no_background_fetch=True, prefetch_size=100000))
        assert layer.prefetch_end() == 100000
        fetched = data_requests(fetcher, fetcher.size)
        assert fetched and min(s for r in fetched for s, _ in r) < 1000  # the first file
        assert max(e for r in fetched for _, e in r) < 100000 + 20000  # up to the last chunk
        assert layer.stats().prefetch_complete and layer.stats().fetched_prefetch >= 90000

    asyncio.run(go())


def test_mount_from_file_with_background_fetch_into_a_disk_cache(tmp_path: Path) -> None:
    built = prioritized_layer(tmp_path)
    cache = cache_from_config(CacheConfig(directory=str(tmp_path / "cache")))

    async def go() -> None:
        layer = await mount_from_file(built.path, LAYER_DIGEST, built.result.toc_digest, cache,
                                      Config(background_quiet_sec=0))
        await layer.wait_background()
        assert layer.stats().background_complete

    asyncio.run(go())
    assert cache.disk is not None
    chunks = sum(-(-len(d) // 10000) for d in built.files.values())
    assert len(cache.disk) == chunks + 1  # and the landmark file
