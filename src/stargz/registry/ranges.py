"""Byte ranges over HTTP: Range headers, Content-Range checks and multipart/byteranges bodies.

Ranges are ``(start, end)`` with ``end`` exclusive, as everywhere in stargz; HTTP's are inclusive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from stargz.errors import InvalidArgumentError, RangeError

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
MAX_PART_HEADER = 16 * 1024


def check_ranges(ranges: Sequence[tuple[int, int]]) -> None:
    for start, end in ranges:
        if start < 0 or end <= start:
            raise InvalidArgumentError(f"invalid byte range [{start}, {end})")


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping and touching ranges joined: servers answer overlapping
    multi-range requests with the whole body (Go's ServeContent does)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def unsatisfiable_size(content_range: str | None) -> int | None:
    """The size in a 416 answer's ``Content-Range: bytes */SIZE``, if it has one."""
    match = re.fullmatch(r"bytes\s+\*/(\d+)", (content_range or "").strip())
    return int(match[1]) if match else None


def range_header(ranges: Sequence[tuple[int, int]]) -> str:
    return "bytes=" + ",".join(f"{start}-{end - 1}" for start, end in ranges)


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``bytes 0-9/100`` -> (0, 10, 100): start, exclusive end, total size (None for ``*``)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise RangeError(f"unreadable Content-Range {value!r}")
    start, last = int(match[1]), int(match[2])
    if last < start:
        raise RangeError(f"backwards Content-Range {value!r}")
    total = None if match[3] == "*" else int(match[3])
    return start, last + 1, total


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` Content-Type, None for any other type."""
    if not content_type.lower().startswith("multipart/byteranges"):
        return None
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise RangeError("multipart/byteranges answer without a boundary")
    return match[1] or match[2]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[int, int, bytes]]:
    """Split a multipart/byteranges body into (start, end, data) parts.

    Each part's length comes from its Content-Range, so binary data that happens to contain
    the boundary can not cut a part short."""
    delimiter = b"--" + boundary.encode()
    parts: list[tuple[int, int, bytes]] = []
    position = body.find(delimiter)
    if position < 0:
        raise RangeError("multipart answer without its boundary")
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return parts
        header_end = body.find(b"\r\n\r\n", position)
        if header_end < 0 or header_end - position > MAX_PART_HEADER:
            raise RangeError("multipart part without the end of its headers")
        headers = _part_headers(body[position:header_end])
        start, end, _ = parse_content_range(headers.get("content-range"))
        data_start = header_end + 4
        data = body[data_start:data_start + end - start]
        if len(data) != end - start:
            raise RangeError(f"multipart part {start}-{end - 1} is truncated")
        parts.append((start, end, data))
        position = data_start + len(data)
        if body.startswith(b"\r\n", position):
            position += 2
        if not body.startswith(delimiter, position):
            raise RangeError("multipart part not followed by the boundary")


def _part_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def assemble(ranges: Sequence[tuple[int, int]],
             parts: Sequence[tuple[int, int, bytes]]) -> list[bytes]:
    """Cut each requested range out of the parts served (servers may merge or reorder parts)."""
    results = []
    for start, end in ranges:
        for part_start, part_end, data in parts:
            if part_start <= start and end <= part_end:
                results.append(data[start - part_start:end - part_start])
                break
        else:
            raise RangeError(f"the answer does not hold bytes {start}-{end - 1}")
    return results


def check_single(content_range: str | None, start: int, end: int, body_length: int) -> None:
    """A 206 answer for one range must hold exactly [start, end)."""
    got_start, got_end, _ = parse_content_range(content_range)
    if (got_start, got_end) != (start, end):
        raise RangeError(f"asked for bytes {start}-{end - 1}, got {got_start}-{got_end - 1}")
    if body_length != end - start:
        raise RangeError(f"bytes {start}-{end - 1}: got {body_length} bytes, "
                         f"expected {end - start}")
