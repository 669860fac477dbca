"""Random-access byte sources a blob can be read from.

A reader only ever needs ``size`` and ``read_at``; a remote blob, a local file and
an in-memory buffer all fit behind that one Protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from stargz.errors import FormatError


@runtime_checkable
class RangeSource(Protocol):
    """Anything that serves exact byte ranges of a blob of known size."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset``, or raise FormatError."""
        ...


def check_range(offset: int, length: int, size: int) -> None:
    """Refuse a range that does not lie inside a blob of ``size`` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise FormatError(
            f"read of {length} bytes at offset {offset} is outside the blob ({size} bytes)"
        )


class BytesSource:
    """A blob held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data).toreadonly()

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length, len(self._data))
        return bytes(self._data[offset : offset + length])


class FileSource:
    """A blob in a local file, read with pread (safe to share between threads)."""

    def __init__(self, path: str | Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self._size)
        parts: list[bytes] = []
        done = 0
        while done < length:
            piece = os.pread(self._fd, length - done, offset + done)
            if not piece:
                raise FormatError(
                    f"short read: got {done} of {length} bytes at offset {offset} (file shrank?)"
                )
            parts.append(piece)
            done += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CallableSource:
    """A blob served by a function ``fn(offset, length) -> bytes`` (e.g. a range fetch)."""

    def __init__(self, fn: Callable[[int, int], bytes], size: int) -> None:
        if size < 0:
            raise FormatError(f"negative blob size {size}")
        self._fn = fn
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self._size)
        data = self._fn(offset, length)
        if len(data) != length:
            raise FormatError(
                f"short read: got {len(data)} of {length} bytes at offset {offset}"
            )
        return data
