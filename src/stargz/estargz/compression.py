"""gzip members and zstd frames: the two ways a chunk can be compressed.

zlib_ng and zstandard release the GIL, so these are meant to run in worker threads.
"""

from __future__ import annotations

import io
import threading
from typing import Literal, cast

import zstandard
from zlib_ng import zlib_ng

from stargz.errors import DecompressionError

Compression = Literal["gzip", "zstd-chunked"]
ZLIB_ERROR = cast("type[Exception]", zlib_ng.error)  # the stub mistypes it
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_WBITS = 31
_local = threading.local()


def gzip_member(data: bytes, level: int) -> bytes:
    """One complete gzip member holding ``data``."""
    return zlib_ng.compress(data, level, _GZIP_WBITS)


def zstd_frame(data: bytes, level: int) -> bytes:
    """One complete zstd frame (with checksum and content size) holding ``data``."""
    compressors: dict[int, zstandard.ZstdCompressor] = getattr(_local, "zstd", {})
    _local.zstd = compressors
    compressor = compressors.get(level)
    if compressor is None:  # a ZstdCompressor must not be shared between threads
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        compressors[level] = compressor
    return compressor.compress(data)


def compress(kind: Compression, data: bytes, level: int) -> bytes:
    return gzip_member(data, level) if kind == "gzip" else zstd_frame(data, level)


def decompress_prefix(kind: Compression, data: bytes, need: int) -> bytes:
    """The first ``need`` decompressed bytes of the member(s)/frame(s) in ``data``.

    Never produces more than ``need`` bytes (a hostile member can not balloon memory);
    raises DecompressionError when the data is corrupt or ends too early.
    """
    out = decompress_upto(kind, data, need)
    if len(out) < need:
        raise DecompressionError(
            f"compressed data ended after {len(out)} of {need} expected bytes"
        )
    return out


def decompress_upto(kind: Compression, data: bytes, limit: int) -> bytes:
    """Decompress the member(s)/frame(s) in ``data``, stopping after ``limit`` bytes."""
    return _gunzip_prefix(data, limit) if kind == "gzip" else _unzstd_prefix(data, limit)


def _gunzip_prefix(data: bytes, need: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    rest = data
    try:
        while got < need and rest:
            inflater = zlib_ng.decompressobj(_GZIP_WBITS)
            piece = inflater.decompress(rest, need - got)
            parts.append(piece)
            got += len(piece)
            if got >= need:
                break
            if not inflater.eof:
                piece = inflater.decompress(inflater.unconsumed_tail, need - got)
                parts.append(piece)
                got += len(piece)
                if not inflater.eof:
                    break
            rest = inflater.unused_data
    except ZLIB_ERROR as err:
        raise DecompressionError(f"gzip data does not decompress: {err}") from None
    return b"".join(parts)


def _unzstd_prefix(data: bytes, need: int) -> bytes:
    dctx = zstandard.ZstdDecompressor()
    try:
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            parts: list[bytes] = []
            got = 0
            while got < need:
                piece = reader.read(need - got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
    except zstandard.ZstdError as err:
        raise DecompressionError(f"zstd data does not decompress: {err}") from None
    return b"".join(parts)


class GzipMemberReader:
    """The content of the gzip member at the start of ``data``, read piece by piece: each
    ``read(n)`` gives exactly ``n`` bytes (fewer only at the member's end), so a caller
    never holds more than it asked for, whatever the member inflates to."""

    def __init__(self, data: bytes) -> None:
        self._inflater = zlib_ng.decompressobj(_GZIP_WBITS)
        self._input = data

    def read(self, n: int) -> bytes:
        try:
            out = self._inflater.decompress(self._input, n)
        except ZLIB_ERROR as err:
            raise DecompressionError(f"gzip member does not decompress: {err}") from None
        self._input = self._inflater.unconsumed_tail
        return out

    @property
    def at_end(self) -> bool:
        """Whether the member's end (and its checksum) has been read."""
        return bool(self._inflater.eof)
