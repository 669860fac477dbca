"""The prefetch range fetched ahead of the TOC's parse: the landmark read from the raw tail, the
fetcher that answers from those bytes, and the layer service using both (every byte still
verified against the TOC)."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from pathlib import Path

import anyio

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.errors import TransportError
from stargz.estargz.footer import estargz_footer
from stargz.estargz.reader import TAIL_READ, open_blob
from stargz.estargz.source import BytesSource
from stargz.estargz.toc import TOC_TAR_NAME
from stargz.layer.landmark import landmark_end
from stargz.layer.service import LayerService
from stargz.registry.reference import Reference
from stargz.remote import BlobFetcher, CountingFetcher, FileBlobFetcher, Range
from stargz.remote.ahead import AheadFetcher
from tests.unit.test_layer_helpers import Built, build_blob, payload

REPO = Reference.parse("registry.test/app")
DIGEST = "sha256:" + "c" * 64
PRIORITIZED = ("app/first.bin", "app/second.bin")


def prioritized(tmp: Path) -> Built:
    # bigger than the footer+TOC tail read: the prefetch range is fetched, not held
    files = {f"lib/f{i}.bin": payload(i, 80000) for i in range(10)}
    files["app/first.bin"] = payload(100, 30000)
    files["app/second.bin"] = payload(101, 30000)
    return build_blob(tmp, files, chunk_size=10000, level=1, prioritized=PRIORITIZED)


def tail_of(built: Built) -> tuple[bytes, int]:
    data = built.path.read_bytes()
    return data[-TAIL_READ:], len(data)


def verified_end(built: Built) -> int | None:
    blob = open_blob(BytesSource(built.path.read_bytes())).verify(built.result.toc_digest)
    return blob.prefetch_end()


def test_the_landmark_read_from_the_tail_is_the_verified_tocs(tmp_path: Path) -> None:
    built = prioritized(tmp_path)
    tail, size = tail_of(built)
    end = landmark_end(tail, size, 64 << 20)
    assert end is not None and end > 60000
    assert end == verified_end(built)


def test_a_layer_without_prioritized_files_prefetches_nothing_ahead(tmp_path: Path) -> None:
    built = build_blob(tmp_path, {"lib/a.bin": payload(1, 30000)}, chunk_size=10000, level=1)
    tail, size = tail_of(built)
    assert landmark_end(tail, size, 64 << 20) == verified_end(built) == 0


def toc_blob(entries: bytes) -> bytes:
    """A blob of nothing but a TOC member holding ``entries`` as the JSON, and its footer."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(TOC_TAR_NAME)
        info.size = len(entries)
        tar.addfile(info, io.BytesIO(entries))
    return gzip.compress(out.getvalue()) + estargz_footer(0)


def test_odd_tails_give_no_answer_rather_than_a_guess() -> None:
    nested = b'{"entries":[{"name":".prefetch.landmark","type":"reg","offset":7,"x":{}}]}'
    for tail in (b"", b"not a blob" * 10,
                 toc_blob(b'{"entries":[{"name":".prefetch.landmark","type":"dir","offset":7}]}'),
                 toc_blob(b'{"entries":[{"name":".prefetch.landmark","type":"reg","offset":"7"}]}'),
                 toc_blob(nested), toc_blob(b'{"entries":[]}')):
        assert landmark_end(tail, len(tail), 64 << 20) is None


class Gate:
    """A fetcher whose answers wait until it is opened (or fail, once ``broken``)."""

    def __init__(self, inner: BlobFetcher) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.broken = False
        self.asked: list[list[Range]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        self.asked.append(list(ranges))
        await self.open.wait()
        if self.broken:
            raise TransportError("registry gone (test)")
        return await self.inner.fetch(ranges)


def test_the_fetcher_answers_from_the_pieces_fetched_ahead(tmp_path: Path) -> None:
    built = prioritized(tmp_path)
    whole = built.path.read_bytes()

    async def go() -> None:
        gate = Gate(FileBlobFetcher(built.path))
        ahead = AheadFetcher(gate, 100000, 3, timeout=10)
        async with anyio.create_task_group() as group:
            group.start_soon(ahead.run)
            while len(gate.asked) < 3:
                await asyncio.sleep(0.01)
            assert gate.asked == [[(0, 33334)], [(33334, 66668)], [(66668, 100000)]]
            asking = asyncio.ensure_future(ahead.fetch([(10, 50000), (99990, 100000)]))
            await asyncio.sleep(0.05)
            assert not asking.done()  # waits for the pieces, asks nobody else
            gate.open.set()
            assert await asking == [whole[10:50000], whole[99990:100000]]
        asked = len(gate.asked)
        # within: from the pieces; beyond the end: from the registry, in the same order
        assert await ahead.fetch([(5, 6), (100000, 100010)]) == [whole[5:6], whole[100000:100010]]
        assert gate.asked[asked:] == [[(100000, 100010)]]
        ahead.drop()
        assert await ahead.fetch([(5, 6)]) == [whole[5:6]]
        assert gate.asked[-1] == [(5, 6)]

    asyncio.run(go())


def test_a_piece_that_failed_is_fetched_again_by_the_reader(tmp_path: Path) -> None:
    built = prioritized(tmp_path)
    whole = built.path.read_bytes()

    async def go() -> None:
        gate = Gate(FileBlobFetcher(built.path))
        gate.broken = True
        gate.open.set()
        ahead = AheadFetcher(gate, 1000, 1, timeout=10)
        await ahead.run()
        gate.broken = False
        assert await ahead.fetch([(0, 1000)]) == [whole[:1000]]
        assert gate.asked == [[(0, 1000)], [(0, 1000)]]

    asyncio.run(go())


def test_the_service_fetches_the_prefetch_range_while_resolving(tmp_path: Path) -> None:
    """A pre-resolution alone (no acquire yet) has asked for the prefetch range; the acquire
    then prefetches without asking again and serves the prioritized files verified."""
    built = prioritized(tmp_path)
    end = verified_end(built)
    assert end
    fetchers: list[CountingFetcher] = []

    async def open_fetcher(repo: Reference, digest: str, size: int | None) -> BlobFetcher:
        fetchers.append(CountingFetcher(FileBlobFetcher(built.path)))
        return fetchers[-1]

    async def go() -> None:
        config = Config(no_background_fetch=True)
        async with LayerService(config, cache=TieredCache(MemoryCache(64 << 20)),
                                open_fetcher=open_fetcher) as layers:
            layers.resolve_soon(REPO, DIGEST)
            while DIGEST not in layers.resolved():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the pieces are fetched by the service's own task
            (counting,) = fetchers
            ahead = [r for r in counting.requests if r[0][1] <= end]
            assert ahead and max(e for r in ahead for _, e in r) == end
            asked = len(counting.requests)
            layer = await layers.acquire(REPO, DIGEST, built.result.toc_digest)
            assert layer.stats().prefetch_complete
            assert len(counting.requests) == asked
            for name in PRIORITIZED:
                assert await layer.read(name, 0, 1 << 20) == built.files[name]
            assert len(counting.requests) == asked
            await layers.release(DIGEST)

    asyncio.run(go())


def test_noprefetch_fetches_nothing_ahead(tmp_path: Path) -> None:
    built = prioritized(tmp_path)
    fetchers: list[CountingFetcher] = []

    async def open_fetcher(repo: Reference, digest: str, size: int | None) -> BlobFetcher:
        fetchers.append(CountingFetcher(FileBlobFetcher(built.path)))
        return fetchers[-1]

    async def go() -> None:
        config = Config(no_background_fetch=True, noprefetch=True)
        async with LayerService(config, cache=TieredCache(MemoryCache(64 << 20)),
                                open_fetcher=open_fetcher) as layers:
            await layers.acquire(REPO, DIGEST, built.result.toc_digest)
            size = built.result.blob_size
            assert fetchers[0].requests == [[(max(0, size - TAIL_READ), size)]]
            await layers.release(DIGEST)

    asyncio.run(go())


class _Stalling:
    """A fetcher whose requests wait until ``go`` is set, counting how many are in flight."""

    size = 10 << 20

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.in_flight = 0

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        self.in_flight += 1
        try:
            await self.go.wait()
        finally:
            self.in_flight -= 1
        return [bytes(end - start) for start, end in ranges]


def test_pieces_fetched_ahead_take_at_most_their_slots() -> None:
    """Two layers' prefetch ranges share the slots, so a stalled prefetch leaves the registry
    client's other requests to on-demand reads."""
    async def go() -> None:
        slots = anyio.CapacityLimiter(3)
        inners = [_Stalling(), _Stalling()]
        aheads = [AheadFetcher(inner, 6 << 20, 6, 5.0, slots) for inner in inners]
        async with anyio.create_task_group() as group:
            for ahead in aheads:
                group.start_soon(ahead.run)
            await anyio.wait_all_tasks_blocked()
            assert sum(inner.in_flight for inner in inners) == 3
            for inner in inners:
                inner.go.set()
        assert all(inner.in_flight == 0 for inner in inners)
        for ahead in aheads:  # every piece came, and answers from memory
            assert await ahead.fetch([(0, 6 << 20)]) == [bytes(6 << 20)]

    anyio.run(go)
