"""The builder's input: a tar stream that may be plain, gzip- or zstd-compressed.

Compression is detected by magic and undone on the fly; for reordering, the plain
tar is spooled to a temporary file and read back with random access.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import zstandard
from zlib_ng import zlib_ng

from stargz.errors import BuildError
from stargz.estargz.compression import GZIP_MAGIC, ZLIB_ERROR, ZSTD_MAGIC

_READ_SIZE = 1 << 20


class _GzipStream:
    """Decompresses concatenated gzip members (an eStargz blob is one) as a file-like."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._raw = raw
        self._pending = head
        self._inflater = zlib_ng.decompressobj(31)
        self._done = False

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        want = n
        while want > 0 and not self._done:
            data = self._inflater.unconsumed_tail or self._pending or self._raw.read(_READ_SIZE)
            self._pending = b""
            if not data:
                if not self._inflater.eof:
                    raise BuildError("gzip input is truncated")
                self._done = True
                break
            try:
                piece = self._inflater.decompress(data, want)
            except ZLIB_ERROR as err:
                raise BuildError(f"gzip input does not decompress: {err}") from None
            out.append(piece)
            want -= len(piece)
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
                self._inflater = zlib_ng.decompressobj(31)
                if not self._pending:
                    self._pending = self._raw.read(_READ_SIZE)
                    if not self._pending:
                        self._done = True
        return b"".join(out)


class _PrefixedStream:
    """A stream with bytes already read from its start put back in front."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._raw = raw
        self._head = head

    def read(self, n: int) -> bytes:
        if self._head:
            piece, self._head = self._head[:n], self._head[n:]
            if len(piece) < n:
                piece += self._raw.read(n - len(piece))
            return piece
        return self._raw.read(n)


class _ZstdStream:
    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _PrefixedStream(raw, head),  # type: ignore[arg-type]  # only read() is used
            read_across_frames=True,
        )

    def read(self, n: int) -> bytes:
        try:
            return self._reader.read(n)
        except zstandard.ZstdError as err:
            raise BuildError(f"zstd input does not decompress: {err}") from None


class TarInput:
    """``read(n)`` gives exactly n bytes of the plain tar, fewer only at its end."""

    def __init__(self, src: BinaryIO) -> None:
        head = _read_full(src.read, 4)
        self.compression = "plain"
        self._stream: _GzipStream | _ZstdStream | _PrefixedStream
        if head[:3] == GZIP_MAGIC:
            self.compression = "gzip"
            self._stream = _GzipStream(src, head)
        elif head == ZSTD_MAGIC:
            self.compression = "zstd"
            self._stream = _ZstdStream(src, head)
        else:
            self._stream = _PrefixedStream(src, head)

    def read(self, n: int) -> bytes:
        return _read_full(self._stream.read, n)

    def spool(self) -> BinaryIO:
        """Copy the rest of the plain tar to an anonymous temporary file (rewound)."""
        # The caller owns (and closes) the returned file, so no context manager here.
        spool = tempfile.TemporaryFile(prefix="stargz-build-")  # noqa: SIM115
        try:
            while piece := self.read(4 << 20):
                spool.write(piece)
            spool.flush()
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool


def _read_full(reader: Callable[[int], bytes], n: int) -> bytes:
    first = reader(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        piece = reader(n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise BuildError("spooled tar shrank while it was read")
    return data
