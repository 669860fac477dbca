"""Verified TOCs kept beside the chunk cache: a new LayerService (a restart) mounts a layer again
with its registry down, serves the cached chunks, fails (and recovers) on the others; what is on
disk is verified again and dropped when it does not verify."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from stargz.cache import cache_from_config
from stargz.config import CacheConfig, Config
from stargz.errors import TransportError
from stargz.layer.persisted import TOCS_DIR, TOCStore
from stargz.layer.service import LayerService
from stargz.remote import BlobFetcher
from tests.unit.test_layer_helpers import SwitchableFetcher
from tests.unit.test_layer_service import REPO, A, Blobs, two_blobs


def config_in(tmp: Path) -> Config:
    return Config(no_background_fetch=True, cache=CacheConfig(directory=str(tmp / "cache")))


def service(blobs: Blobs, config: Config) -> LayerService:
    return LayerService(config, cache=cache_from_config(config.cache), open_fetcher=blobs.open)


def kept_file(config: Config, toc: str) -> Path:
    return Path(config.cache.directory) / TOCS_DIR / toc.removeprefix("sha256:")


def first_run(blobs: Blobs, config: Config, toc: str) -> None:
    """A layer mounted once, one file read (its chunks now on disk)."""

    async def go() -> None:
        async with service(blobs, config) as layers:
            layer = await layers.acquire(REPO, A, toc)
            assert await layer.read("lib/a0.bin", 0, 30000) == blobs.built[A].files["lib/a0.bin"]

    asyncio.run(go())


def test_a_restart_mounts_again_from_disk_with_the_registry_down(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[A].result.toc_digest
    config = config_in(tmp_path)
    first_run(blobs, config, toc)
    kept = kept_file(config, toc)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    switches: list[SwitchableFetcher] = []

    def down(fetcher: BlobFetcher) -> BlobFetcher:
        switch = SwitchableFetcher(fetcher)
        switch.up = False
        switches.append(switch)
        return switch

    blobs.wrap, blobs.fetchers = down, {}

    async def go() -> None:
        async with service(blobs, config) as layers:
            layer = await layers.acquire(REPO, A, toc)
            assert blobs.requests(A) == []  # not one byte asked of the registry
            assert await layer.read("lib/a0.bin", 0, 30000) == blobs.built[A].files["lib/a0.bin"]
            with pytest.raises(TransportError):  # never read: needs the registry
                await layer.read("lib/a1.bin", 0, 100)
            switches[0].up = True  # the registry is back
            again = await layer.read("lib/a1.bin", 0, 100)
            assert again == blobs.built[A].files["lib/a1.bin"][:100]

    asyncio.run(go())


def test_a_tampered_toc_on_disk_is_dropped_and_fetched_again(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[A].result.toc_digest
    config = config_in(tmp_path)
    first_run(blobs, config, toc)
    kept = kept_file(config, toc)
    data = bytearray(kept.read_bytes())
    data[-40] ^= 0xFF  # in the footer or TOC
    kept.write_bytes(bytes(data))
    blobs.fetchers = {}

    async def go() -> None:
        async with service(blobs, config) as layers:
            layer = await layers.acquire(REPO, A, toc)
            assert blobs.requests(A)  # resolved from the registry again
            assert await layer.read("lib/a2.bin", 0, 10) == blobs.built[A].files["lib/a2.bin"][:10]

    asyncio.run(go())
    assert kept.read_bytes() != bytes(data)  # written again, from the verified TOC


def test_half_written_files_are_swept_and_another_blob_is_not_taken(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[A].result.toc_digest
    config = config_in(tmp_path)
    first_run(blobs, config, toc)
    temp = kept_file(config, toc).parent / ".tmp-half.1.2"
    temp.write_bytes(b"half")
    store = TOCStore(config.cache.directory)
    assert not temp.exists()
    other = "sha256:" + "c" * 64
    assert store.load(other, toc, config.limits) is None  # same TOC, other blob: not ours
    assert kept_file(config, toc).exists()
    loaded = store.load(A, toc, config.limits)
    assert loaded is not None and loaded[0] == blobs.built[A].result.blob_size
    assert loaded[1].toc_digest == toc
    assert os.listdir(kept_file(config, toc).parent) == [toc.removeprefix("sha256:")]


def test_an_external_toc_layer_is_kept_with_its_toc(tmp_path: Path) -> None:
    from stargz.estargz.reader import TAIL_READ
    from stargz.layer.persisted import PersistedTail
    from tests.unit.test_estargz_external_toc import FILES, convert, make_tar

    blob, result = convert(make_tar(), external_toc=True)
    assert result.external_toc is not None
    base = max(0, len(blob) - TAIL_READ)
    store = TOCStore(tmp_path)
    store.save(PersistedTail(A, len(blob), "registry.test/app", result.toc_digest, base,
                             blob[base:], result.external_toc))
    loaded = store.load(A, result.toc_digest, Config().limits)
    assert loaded is not None
    size, verified = loaded
    assert size == len(blob) and verified.toc_digest == result.toc_digest
    assert {e.name for e in verified.toc.entries} >= {name for name, _ in FILES}
