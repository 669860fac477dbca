"""Reading blob answers: exact range bodies, multipart answers, resumed downloads."""

from __future__ import annotations

import httpx

from stargz.errors import RangeError, RegistryError
from stargz.registry.ranges import (
    assemble,
    check_single,
    multipart_boundary,
    parse_content_range,
    parse_multipart,
    unsatisfiable_size,
)
from stargz.registry.retry import ShortBody
from stargz.registry.session import registry_error


def refuses_multirange(response: httpx.Response, ranges: list[tuple[int, int]]) -> bool:
    """A 416 may only mean a range is past the end (the single reads will say so); it is a
    refusal when the size it reports holds every range."""
    if response.status_code != 416:
        return True
    size = unsatisfiable_size(response.headers.get("content-range"))
    return size is not None and all(end <= size for _, end in ranges)


def content_length(response: httpx.Response) -> int:
    value = response.headers.get("content-length", "")
    if not value.isdigit():
        raise RegistryError(f"{response.request.method} {response.url.path}: no Content-Length")
    return int(value)


def stream_total(response: httpx.Response, offset: int) -> int:
    """The blob's full size from a 200 (offset 0) or a resumed 206 that starts at ``offset``."""
    if response.status_code == 206:
        start, _, total = parse_content_range(response.headers.get("content-range"))
        if start != offset or total is None:
            raise RangeError(f"resumed download asked for byte {offset}, got a range at {start}")
        return total
    if offset:
        raise RangeError("the registry ignored the Range header of a resumed download")
    return content_length(response)


async def _read_all(response: httpx.Response, limit: int | None = None) -> bytes:
    """The body, or only its first ``limit`` bytes; ShortBody if the connection ends early."""
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
    finally:
        await response.aclose()
    body = b"".join(chunks)
    expected = response.headers.get("content-length", "")
    if limit is None and expected.isdigit() and len(body) != int(expected):
        raise ShortBody(f"body ended at {len(body)} of {expected} bytes")
    return body


async def single_body(response: httpx.Response, digest: str, start: int, end: int) -> bytes:
    if response.status_code == 206:
        body = await _read_all(response)
        check_single(response.headers.get("content-range"), start, end, len(body))
        return body
    if response.status_code == 200:
        # The registry ignored Range: read only as far as needed, then hang up.
        body = await _read_all(response, limit=end)
        if len(body) < end:
            raise RangeError(f"blob {digest} is {len(body)} bytes, asked for {start}-{end - 1}")
        return body[start:end]
    await response.aread()
    await response.aclose()
    if response.status_code == 416:
        raise RangeError(f"bytes {start}-{end - 1} are not within blob {digest} (HTTP 416)")
    raise registry_error(response, f"blob {digest}")


async def tail_body(response: httpx.Response, digest: str, length: int) -> tuple[int, bytes] | None:
    """The blob's size and last ``length`` bytes from the answer to ``Range: bytes=-length``;
    None when the registry ignored the Range header (the caller asks again with the size)."""
    if response.status_code == 206:
        body = await _read_all(response)
        start, end, total = parse_content_range(response.headers.get("content-range"))
        if total is None or end != total or end - start != min(length, total):
            raise RangeError(f"blob {digest}: asked for its last {length} bytes, got bytes "
                             f"{start}-{end - 1} of {total or 'unknown'}")
        if len(body) != end - start:
            raise RangeError(f"blob {digest}: range {start}-{end - 1} came with {len(body)} bytes")
        return total, body
    await response.aclose()  # a 200 would be the whole blob: not read
    if response.status_code == 200:
        return None
    if response.status_code == 416 and unsatisfiable_size(
            response.headers.get("content-range")) == 0:
        return 0, b""
    raise registry_error(response, f"blob {digest}")


async def multi_body(response: httpx.Response, digest: str,
                      ranges: list[tuple[int, int]]) -> list[bytes]:
    if response.status_code != 206:
        await response.aread()
        await response.aclose()
        raise registry_error(response, f"blob {digest}")
    body = await _read_all(response)
    boundary = multipart_boundary(response.headers.get("content-type", ""))
    if boundary is None:  # the server merged everything into one range
        start, end, _ = parse_content_range(response.headers.get("content-range"))
        if len(body) != end - start:
            raise RangeError(f"blob {digest}: range {start}-{end - 1} came with {len(body)} bytes")
        return assemble(ranges, [(start, end, body)])
    return assemble(ranges, parse_multipart(body, boundary))
