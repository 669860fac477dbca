"""Region math, fetchers and in-flight sharing."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stargz.config import BlobConfig
from stargz.errors import RangeError, TransportError
from stargz.registry.reference import Reference
from stargz.remote import (
    CountingFetcher,
    FileBlobFetcher,
    InFlight,
    RegistryBlobFetcher,
    SpanSet,
    batches,
    fetch_checked,
    merge_ranges,
    retry_policy,
    slice_from,
)


def test_merge_joins_needs_closer_than_the_granularity() -> None:
    needs = [(500, 600), (0, 100), (150, 200), (10000, 10010), (590, 700), (5, 5)]
    assert merge_ranges(needs, 100) == [(0, 200), (500, 700), (10000, 10010)]
    assert merge_ranges(needs, 1) == [(0, 100), (150, 200), (500, 700), (10000, 10010)]
    assert merge_ranges(needs, 50000) == [(0, 10010)]
    assert merge_ranges([], 10) == []


def test_slice_and_batches() -> None:
    fetched = [(0, 10), (20, 30)]
    data = [bytes(range(10)), bytes(range(20, 30))]
    assert slice_from(fetched, data, (22, 25)) == bytes([22, 23, 24])
    with pytest.raises(ValueError):
        slice_from(fetched, data, (8, 12))
    assert batches([(0, 10), (10, 20), (20, 50), (50, 55)], 20) == [
        [(0, 10), (10, 20)], [(20, 50)], [(50, 55)]]


def test_span_set_totals_the_union() -> None:
    spans = SpanSet()
    for start, end in [(0, 10), (5, 15), (20, 30), (15, 20), (100, 100)]:
        spans.add(start, end)
    assert spans.total == 30 and spans.covers(3, 28) and not spans.covers(25, 31)


def test_file_fetcher_and_counting(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)))
    fetcher = CountingFetcher(FileBlobFetcher(path))
    assert fetcher.size == 256
    got = asyncio.run(fetcher.fetch([(0, 2), (250, 256)]))
    assert got == [b"\x00\x01", bytes(range(250, 256))]
    assert fetcher.requests == [[(0, 2), (250, 256)]] and fetcher.bytes_fetched == 8
    with pytest.raises(RangeError):
        asyncio.run(fetcher.fetch([(250, 257)]))
    with pytest.raises(TransportError):
        FileBlobFetcher(tmp_path / "absent")


class ShortRegistry:
    """A registry client answer with one byte missing."""

    async def read_blob_ranges(self, ref: Reference, digest: str,
                               ranges: object) -> list[bytes]:
        return [b"abc"]


def test_registry_fetcher_refuses_short_answers() -> None:
    fetcher = RegistryBlobFetcher(ShortRegistry(), Reference.parse("example.com/a/b:1"),
                                  "sha256:" + "1" * 64, 100)
    with pytest.raises(RangeError, match="came back with 3 bytes"):
        asyncio.run(fetcher.fetch([(0, 4)]))


def test_fetch_checked_turns_os_errors_into_transport_errors(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10)
    fetcher = FileBlobFetcher(path)
    fetcher.close()  # reads now fail with EBADF
    with pytest.raises(TransportError):
        asyncio.run(fetch_checked(fetcher, [(0, 1)], 5.0))


def test_inflight_shares_and_forgets() -> None:
    async def go() -> None:
        flights = InFlight()
        first = flights.claim("k")
        assert flights.get("k") is first
        flights.resolve("k", b"data")
        assert await first == b"data" and flights.get("k") is None and len(flights) == 0
        failing = flights.claim("k")
        flights.fail("k", TransportError("down"))
        with pytest.raises(TransportError):
            await failing
        unwatched = flights.claim("j")
        flights.fail("j", TransportError("nobody listens"))  # must not warn
        assert unwatched.done() and flights.get("j") is None

    asyncio.run(go())


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 300)), max_size=40),
       st.integers(1, 2000))
def test_merge_covers_every_need_and_nothing_overlaps(raw: list[tuple[int, int]],
                                                      granularity: int) -> None:
    needs = [(start, start + length) for start, length in raw]
    merged = merge_ranges(needs, granularity)
    for start, end in needs:
        assert start == end or any(s <= start and end <= e for s, e in merged)
    for (_, end), (start, _) in itertools.pairwise(merged):
        assert start - end >= granularity


def test_retry_policy_follows_blob_config() -> None:
    assert retry_policy(BlobConfig(max_retries=2)).max_retries == 2
