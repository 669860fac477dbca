"""Range headers, Content-Range and multipart/byteranges parsing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stargz.errors import InvalidArgumentError, RangeError
from stargz.registry.ranges import (
    assemble,
    check_ranges,
    check_single,
    multipart_boundary,
    parse_content_range,
    parse_multipart,
    range_header,
)


def multipart(data: bytes, ranges: list[tuple[int, int]], boundary: str = "B0UND") -> bytes:
    out = b""
    for start, end in ranges:
        out += (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{len(data)}\r\n\r\n").encode()
        out += data[start:end] + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_range_header_and_content_range() -> None:
    assert range_header([(0, 10), (20, 30)]) == "bytes=0-9,20-29"
    assert parse_content_range("bytes 5-9/100") == (5, 10, 100)
    assert parse_content_range("bytes 5-9/*") == (5, 10, None)
    for bad in (None, "", "bytes 9-5/100", "items 1-2/3", "bytes 1-2"):
        with pytest.raises(RangeError):
            parse_content_range(bad)
    with pytest.raises(InvalidArgumentError):
        check_ranges([(5, 5)])
    with pytest.raises(InvalidArgumentError):
        check_ranges([(-1, 5)])


def test_boundary() -> None:
    assert multipart_boundary("multipart/byteranges; boundary=abc") == "abc"
    assert multipart_boundary('multipart/byteranges; boundary="a b"') == "a b"
    assert multipart_boundary("application/octet-stream") is None
    with pytest.raises(RangeError):
        multipart_boundary("multipart/byteranges")


def test_parts_that_contain_the_boundary() -> None:
    data = b"--B0UND\r\n" * 50
    ranges = [(0, 20), (100, 300)]
    parts = parse_multipart(multipart(data, ranges), "B0UND")
    assert [(s, e) for s, e, _ in parts] == ranges
    assert assemble(ranges, parts) == [data[0:20], data[100:300]]


def test_assemble_from_merged_parts_and_missing() -> None:
    data = bytes(range(256))
    parts = [(0, 100, data[:100])]
    assert assemble([(10, 20), (50, 60)], parts) == [data[10:20], data[50:60]]
    with pytest.raises(RangeError):
        assemble([(90, 110)], parts)


def test_truncated_multipart() -> None:
    data = bytes(range(256))
    body = multipart(data, [(0, 100)])
    with pytest.raises(RangeError):
        parse_multipart(body[:60], "B0UND")
    with pytest.raises(RangeError):
        parse_multipart(b"no boundary here", "B0UND")


def test_check_single() -> None:
    check_single("bytes 10-19/100", 10, 20, 10)
    with pytest.raises(RangeError):
        check_single("bytes 10-19/100", 10, 21, 10)
    with pytest.raises(RangeError):
        check_single("bytes 10-19/100", 10, 20, 9)


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_multipart_roundtrip(data: bytes, draw: st.DataObject) -> None:
    points = sorted(draw.draw(st.sets(st.integers(0, len(data)), min_size=2, max_size=10)))
    ranges = [(a, b) for a, b in itertools.pairwise(points) if a < b]
    if not ranges:
        return
    parts = parse_multipart(multipart(data, ranges), "B0UND")
    assert assemble(ranges, parts) == [data[a:b] for a, b in ranges]


def test_merge_ranges() -> None:
    from stargz.registry.ranges import merge_ranges, unsatisfiable_size

    assert merge_ranges([(10, 20), (0, 5), (5, 7), (15, 30), (40, 41)]) == [(0, 7), (10, 30),
                                                                            (40, 41)]
    assert merge_ranges([]) == []
    assert unsatisfiable_size("bytes */123") == 123
    assert unsatisfiable_size(None) is None
