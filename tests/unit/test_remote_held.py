"""Bytes the footer+TOC tail read brought along are never fetched again: the held-bytes fetcher,
and the layer service counted at its transport (every file read back exact)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.estargz.reader import TAIL_READ
from stargz.layer.service import LayerService
from stargz.registry.reference import Reference
from stargz.remote import BlobFetcher, CountingFetcher, FileBlobFetcher, Range
from stargz.remote.held import HeldBytesFetcher
from tests.unit.test_layer_helpers import Built, build_blob, payload

REPO = Reference.parse("registry.test/app")
DIGEST = "sha256:" + "d" * 64


def test_held_bytes_answer_and_only_the_rest_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    whole = payload(7, 1000)
    path.write_bytes(whole)
    counting = CountingFetcher(FileBlobFetcher(path))
    held = HeldBytesFetcher(counting, 600, whole[600:900])
    ranges: list[Range] = [(650, 700), (500, 650), (0, 10), (580, 950), (600, 900)]
    assert asyncio.run(held.fetch(ranges)) == [whole[s:e] for s, e in ranges]
    # within: nothing asked; straddling the start: only the part before; past the held end:
    # the whole range
    assert counting.requests == [[(500, 600), (0, 10), (580, 950)]]
    assert asyncio.run(held.fetch([(610, 620)])) == [whole[610:620]]
    assert len(counting.requests) == 1


def served(counting: CountingFetcher) -> tuple[int, int]:
    """(bytes served, bytes served more than once) by a counted transport."""
    times = [0] * counting.size
    for request in counting.requests:
        for start, end in request:
            for at in range(start, end):
                times[at] += 1
    return counting.bytes_fetched, sum(n - 1 for n in times if n > 1)


def open_and_read_all(built: Built, config: Config) -> CountingFetcher:
    fetchers: list[CountingFetcher] = []

    async def open_fetcher(repo: Reference, digest: str, size: int | None) -> BlobFetcher:
        fetchers.append(CountingFetcher(FileBlobFetcher(built.path)))
        return fetchers[-1]

    async def go() -> None:
        async with LayerService(config, cache=TieredCache(MemoryCache(64 << 20)),
                                open_fetcher=open_fetcher) as layers:
            layer = await layers.acquire(REPO, DIGEST, built.result.toc_digest)
            await layer.wait_background()
            for name, data in built.files.items():
                assert await layer.read(name, 0, len(data) + 1) == data
            await layers.release(DIGEST)

    asyncio.run(go())
    (counting,) = fetchers
    return counting


def test_a_small_blob_is_fetched_once_whole_at_most(tmp_path: Path) -> None:
    files = {f"lib/f{i}.bin": payload(i, 6000) for i in range(6)}
    files["app/first.bin"] = payload(100, 6000)
    built = build_blob(tmp_path, files, chunk_size=2000, level=1,
                       prioritized=("app/first.bin",))
    size = built.result.blob_size
    assert size < TAIL_READ  # the tail read holds the whole blob
    for config in (Config(), Config(noprefetch=True), Config(no_background_fetch=True)):
        counting = open_and_read_all(built, config)
        fetched, twice = served(counting)
        assert twice == 0 and fetched == size
        assert counting.requests[0] == [(0, size)]


def test_a_prefetch_running_into_the_tail_fetches_no_byte_twice(tmp_path: Path) -> None:
    # the prioritized files (prefetched, fetched ahead of the TOC's parse) reach past the start
    # of the 64 KiB tail
    files = {f"app/p{i}.bin": payload(i, 60000) for i in range(7)}
    files.update({f"lib/f{i}.bin": payload(50 + i, 8000) for i in range(4)})
    built = build_blob(tmp_path, files, chunk_size=16384, level=1,
                       prioritized=tuple(f"app/p{i}.bin" for i in range(7)))
    size = built.result.blob_size
    assert TAIL_READ < size < TAIL_READ + 700000
    for config in (Config(), Config(no_background_fetch=True)):
        counting = open_and_read_all(built, config)
        fetched, twice = served(counting)
        assert twice == 0 and fetched <= size
