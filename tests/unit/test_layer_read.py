"""Layer reads over real blobs: what is fetched, shared, cached and refused."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from stargz.cache import DiskCache, MemoryCache, TieredCache
from stargz.config import BlobConfig, Config
from stargz.errors import (
    ChunkDigestMismatch,
    InvalidArgumentError,
    NotFoundError,
    TOCDigestMismatch,
    TransportError,
)
from stargz.estargz.reader import TAIL_READ
from stargz.layer import Layer
from stargz.layer.layer import _by_compressed_size
from stargz.remote import CountingFetcher, FileBlobFetcher, Range
from tests.unit.test_layer_helpers import (
    LAYER_DIGEST,
    Built,
    SwitchableFetcher,
    big_layer,
    build_blob,
    payload,
)

CONFIG = Config(no_background_fetch=True)


def memory_cache() -> TieredCache:
    return TieredCache(MemoryCache(64 << 20))


async def open_layer(built: Built, fetcher: CountingFetcher, cache: TieredCache,
                     config: Config = CONFIG) -> Layer:
    return await Layer.open(fetcher, LAYER_DIGEST, built.result.toc_digest, cache, config)


def test_small_file_fetches_only_footer_toc_and_its_member(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> bytes:
        layer = await open_layer(built, fetcher, memory_cache())
        return await layer.read("etc/small.txt", 0, 4096)

    assert asyncio.run(go()) == built.files["etc/small.txt"]
    size = built.result.blob_size
    tail = (max(0, size - TAIL_READ), size)
    assert fetcher.requests[0] == [tail]
    # Everything after the tail read is the small file's one member: a few dozen bytes.
    later = fetcher.requests[1:]
    assert len(later) == 1 and len(later[0]) == 1
    start, end = later[0][0]
    assert end - start < 200


def test_read_ranges_across_chunks_give_the_exact_bytes(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    data = built.files["data/f07.bin"]
    cases = [(0, 10), (16380, 10), (5000, 40000), (65530, 100), (0, 1 << 20), (70000, 5)]

    async def go() -> list[bytes]:
        layer = await open_layer(built, CountingFetcher(FileBlobFetcher(built.path)),
                                 memory_cache())
        return [await layer.read("data/f07.bin", off, n) for off, n in cases]

    got = asyncio.run(go())
    assert got == [data[off:off + n] for off, n in cases]


def test_concurrent_reads_of_one_chunk_fetch_it_once(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> list[bytes]:
        layer = await open_layer(built, fetcher, memory_cache())
        before = len(fetcher.requests)
        reads = [layer.read("data/f03.bin", 100 + i, 1000) for i in range(20)]
        out = await asyncio.gather(*reads)
        assert len(fetcher.requests) == before + 1
        assert layer.stats().cache_misses == 1 and layer.stats().cache_hits == 0
        return out

    want = built.files["data/f03.bin"]
    assert asyncio.run(go()) == [want[100 + i:1100 + i] for i in range(20)]


def test_second_open_with_same_disk_cache_fetches_no_file_data(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    names = ["data/f01.bin", "data/f22.bin", "etc/small.txt"]

    async def read_all(fetcher: CountingFetcher) -> list[bytes]:
        cache = TieredCache(MemoryCache(1 << 20), DiskCache(tmp_path / "cache", 1 << 30))
        layer = await open_layer(built, fetcher, cache)
        return [await layer.read(n, 0, 1 << 20) for n in names]

    first, second = CountingFetcher(FileBlobFetcher(built.path)), CountingFetcher(
        FileBlobFetcher(built.path))
    assert asyncio.run(read_all(first)) == [built.files[n] for n in names]
    assert len(first.requests) > 1
    assert asyncio.run(read_all(second)) == [built.files[n] for n in names]
    assert len(second.requests) == 1  # the footer/TOC tail only


def test_tampered_chunk_is_refused_and_not_cached(tmp_path: Path) -> None:
    # level 0 stores the data verbatim, so a flipped byte decompresses to wrong bytes.
    secret = payload(9, 3000)
    built = build_blob(tmp_path, {"a.bin": secret}, level=0)
    raw = bytearray(built.path.read_bytes())
    at = raw.find(secret[1000:1032])
    raw[at] ^= 0xFF
    tampered = tmp_path / "tampered"
    tampered.write_bytes(bytes(raw))
    cache = TieredCache(MemoryCache(1 << 20), DiskCache(tmp_path / "cache", 1 << 30))

    async def go() -> None:
        fetcher = CountingFetcher(FileBlobFetcher(tampered))
        layer = await open_layer(built, fetcher, cache)
        with pytest.raises(ChunkDigestMismatch) as caught:
            await layer.read("a.bin", 0, 100)
        message = str(caught.value)
        assert LAYER_DIGEST in message and "a.bin" in message and "at 0" in message
        assert layer.stats().last_error == message

    asyncio.run(go())
    assert len(cache.memory) == 0 and cache.disk is not None and len(cache.disk) == 0


def test_wrong_toc_digest_is_refused_at_open(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))
    with pytest.raises(TOCDigestMismatch):
        asyncio.run(Layer.open(fetcher, LAYER_DIGEST, "sha256:" + "0" * 64, memory_cache(),
                               CONFIG))
    with pytest.raises(InvalidArgumentError):
        asyncio.run(Layer.open(fetcher, LAYER_DIGEST, None, memory_cache(), CONFIG))


def test_registry_down_gives_transport_error_then_recovers(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    switch = SwitchableFetcher(FileBlobFetcher(built.path))

    async def go() -> bytes:
        layer = await Layer.open(CountingFetcher(switch), LAYER_DIGEST,
                                 built.result.toc_digest, memory_cache(), CONFIG)
        switch.up = False
        with pytest.raises(TransportError):
            await layer.read("data/f05.bin", 0, 10)
        switch.up = True
        return await layer.read("data/f05.bin", 0, 10)

    assert asyncio.run(go()) == built.files["data/f05.bin"][:10]


class StallingFetcher:
    """Never answers data requests (a registry that hangs), answers the open."""

    def __init__(self, inner: FileBlobFetcher) -> None:
        self._inner = inner
        self.calls = 0

    @property
    def size(self) -> int:
        return self._inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()
        return await self._inner.fetch(ranges)


def test_fetch_timeout_is_a_transport_error(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    config = Config(no_background_fetch=True, blob=BlobConfig(fetch_timeout_sec=0.2))

    async def go() -> None:
        layer = await Layer.open(StallingFetcher(FileBlobFetcher(built.path)), LAYER_DIGEST,
                                 built.result.toc_digest, memory_cache(), config)
        with pytest.raises(TransportError, match="timed out"):
            await layer.read("data/f05.bin", 0, 10)

    asyncio.run(go())


def test_not_a_file_and_empty_reads(tmp_path: Path) -> None:
    built = big_layer(tmp_path)

    async def go() -> None:
        layer = await open_layer(built, CountingFetcher(FileBlobFetcher(built.path)),
                                 memory_cache())
        with pytest.raises(NotFoundError):
            await layer.read("data", 0, 10)
        with pytest.raises(NotFoundError):
            await layer.read("nope", 0, 10)
        assert await layer.read("etc/small.txt", 1000, 10) == b""
        assert await layer.read("etc/small.txt", 0, 0) == b""
        with pytest.raises(InvalidArgumentError):
            await layer.read("etc/small.txt", -1, 10)

    asyncio.run(go())


def test_stats_count_on_demand_bytes_hits_and_percent(tmp_path: Path) -> None:
    built = big_layer(tmp_path)

    async def go() -> None:
        layer = await open_layer(built, CountingFetcher(FileBlobFetcher(built.path)),
                                 memory_cache())
        await layer.read("data/f10.bin", 0, 1 << 20)
        await layer.read("data/f10.bin", 0, 1 << 20)
        stats = layer.stats()
        assert stats.cache_misses == 4 and stats.cache_hits == 4  # 64 KiB in 16 KiB chunks
        assert 64 << 10 < stats.fetched_on_demand < 70 << 10
        assert stats.fetched_size == stats.fetched_metadata + stats.fetched_on_demand
        assert 0 < stats.fetched_percent < 100
        assert stats.as_dict()["fetchedSize"] == stats.fetched_size

    asyncio.run(go())


def test_zstd_chunked_layer_reads(tmp_path: Path) -> None:
    files = {"z/a.bin": payload(1, 50000), "z/b.txt": b"zstd says hi\n" * 100}
    built = build_blob(tmp_path, files, compression="zstd-chunked", chunk_size=8192)

    async def go() -> list[bytes]:
        layer = await open_layer(built, CountingFetcher(FileBlobFetcher(built.path)),
                                 memory_cache())
        return [await layer.read(n, 0, 1 << 20) for n in files]

    assert asyncio.run(go()) == list(files.values())


def test_small_files_packed_in_one_member_share_a_fetch(tmp_path: Path) -> None:
    files = {f"s/{i}.txt": f"small file {i}\n".encode() * 3 for i in range(30)}
    built = build_blob(tmp_path, files, min_chunk_size=1 << 20)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> list[bytes]:
        layer = await open_layer(built, fetcher, memory_cache())
        return list(await asyncio.gather(*(layer.read(n, 0, 4096) for n in files)))

    assert asyncio.run(go()) == list(files.values())
    assert len(fetcher.requests) == 2  # the tail, then one request for every small file


def test_toc_bigger_than_the_tail_read_takes_one_more_request(tmp_path: Path) -> None:
    files = {f"d/{payload(i, 16).hex()}/{i}": payload(i, 40) for i in range(7500)}
    built = build_blob(tmp_path, files)
    size = built.result.blob_size
    assert size - built.result.toc_offset > TAIL_READ
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> bytes:
        layer = await open_layer(built, fetcher, memory_cache())
        assert len(fetcher.requests) == 2
        assert fetcher.requests[1] == [(built.result.toc_offset, size - TAIL_READ)]
        assert layer.stats().fetched_metadata == size - built.result.toc_offset
        return await layer.read("d/" + payload(7, 16).hex() + "/7", 0, 100)

    assert asyncio.run(go()) == payload(7, 40)


def test_a_cancelled_reader_does_not_fail_others_waiting_for_the_chunk(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> bytes:
        layer = await open_layer(built, fetcher, memory_cache())
        first = asyncio.create_task(layer.read("data/f11.bin", 0, 50))
        second = asyncio.create_task(layer.read("data/f11.bin", 10, 50))
        await asyncio.sleep(0)
        first.cancel()
        data = await second
        assert first.cancelled()
        await layer.close()
        return data

    assert asyncio.run(go()) == built.files["data/f11.bin"][10:60]
    assert len(fetcher.requests) == 2


def test_random_reads_match_the_files(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    rng = random.Random(5)
    names = sorted(built.files)
    cases = []
    for _ in range(200):
        name = rng.choice(names)
        cases.append((name, rng.randrange(0, len(built.files[name]) + 10), rng.randrange(0, 70000)))

    async def go() -> list[bytes]:
        cache = TieredCache(MemoryCache(100 << 10))  # small: evictions happen during the run
        layer = await open_layer(built, CountingFetcher(FileBlobFetcher(built.path)), cache)
        return list(await asyncio.gather(*(layer.read(n, o, s) for n, o, s in cases)))

    got = asyncio.run(go())
    assert got == [built.files[n][o:o + s] for n, o, s in cases]


def test_disk_cache_is_shared_across_layers_by_chunk_digest(tmp_path: Path) -> None:
    shared = payload(42, 30000)
    one = build_blob(tmp_path, {"a/shared.bin": shared, "a/x": b"one"}, name="one")
    two = build_blob(tmp_path, {"b/other": b"two" * 100, "b/same.bin": shared}, name="two")
    cache_dir = tmp_path / "cache"

    async def read(built: Built, name: str, fetcher: CountingFetcher) -> bytes:
        cache = TieredCache(MemoryCache(1 << 20), DiskCache(cache_dir, 1 << 30))
        layer = await open_layer(built, fetcher, cache)
        return await layer.read(name, 0, 1 << 20)

    assert asyncio.run(read(one, "a/shared.bin", CountingFetcher(FileBlobFetcher(one.path)))) \
        == shared
    second = CountingFetcher(FileBlobFetcher(two.path))
    assert asyncio.run(read(two, "b/same.bin", second)) == shared
    assert len(second.requests) == 1  # only the footer/TOC of the second layer


def test_concurrent_reads_of_several_files_go_out_as_one_multi_range_request(
        tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))
    names = ["data/f02.bin", "data/f09.bin", "data/f30.bin"]
    config = Config(no_background_fetch=True, blob=BlobConfig(chunk_size=1))  # no gap merging

    async def go() -> list[bytes]:
        layer = await open_layer(built, fetcher, memory_cache(), config)
        return list(await asyncio.gather(*(layer.read(n, 0, 20000) for n in names)))

    assert asyncio.run(go()) == [built.files[n][:20000] for n in names]
    assert len(fetcher.requests) == 2
    assert len(fetcher.requests[1]) == 3  # one range per file (2 chunks each, adjacent)


def test_a_big_load_is_decoded_in_runs_that_keep_each_member_whole(tmp_path: Path) -> None:
    """A fetch of many members is decoded on several threads: every chunk still comes back
    verified, and reads are then served from the cache with the exact bytes."""
    built = big_layer(tmp_path)
    fetcher = CountingFetcher(FileBlobFetcher(built.path))

    async def go() -> None:
        layer = await open_layer(built, fetcher, memory_cache())
        chunks = layer.all_chunks
        runs = _by_compressed_size(chunks, 2, 512 << 10)
        assert len(runs) == 2 and [c for run in runs for c in run] == chunks
        sizes = [sum(c.compressed_size for c in run) for run in runs]
        assert min(sizes) > 0.3 * sum(sizes)
        assert _by_compressed_size(chunks[:3], 2, 512 << 10) == [chunks[:3]]
        found = await layer.load(chunks, "prefetch")
        assert len(found) == len({c.digest for c in chunks})
        for name, data in built.files.items():
            assert await layer.read(name, 0, len(data)) == data

    asyncio.run(go())
