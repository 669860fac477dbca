"""A blob fetcher that answers from bytes already held (the tail fetched with the TOC)."""

from __future__ import annotations

from stargz.remote.fetcher import BlobFetcher
from stargz.remote.regions import Range


class HeldBytesFetcher:
    """A BlobFetcher answering the part of each range that lies in [``base``, ``base`` +
    len(``data``)) from ``data``, the rest from ``inner``: the chunk bytes the footer+TOC tail
    read brought along are never fetched again. They are raw blob bytes: whoever reads them
    still decodes and verifies every chunk."""

    def __init__(self, inner: BlobFetcher, base: int, data: bytes) -> None:
        self._inner = inner
        self._base = base
        self._data = data

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def held(self) -> Range:
        return self._base, self._base + len(self._data)

    def _to_fetch(self, start: int, end: int) -> Range | None:
        """What of [start, end) the inner fetcher must give (None: all of it is held)."""
        held_start, held_end = self.held
        if held_start <= start and end <= held_end:
            return None
        if start < held_start < end <= held_end:
            return start, held_start  # the rest follows from the held bytes
        return start, end

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        parts = [self._to_fetch(start, end) for start, end in ranges]
        missing = [part for part in parts if part is not None]
        fetched = iter(await self._inner.fetch(missing) if missing else [])
        held_start = self._base
        answers: list[bytes] = []
        for (start, end), part in zip(ranges, parts, strict=True):
            if part is None:
                answers.append(self._data[start - held_start:end - held_start])
            elif part[1] < end:
                answers.append(next(fetched) + self._data[:end - held_start])
            else:
                answers.append(next(fetched))
        return answers
