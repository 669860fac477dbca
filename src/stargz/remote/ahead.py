"""A blob's first bytes fetched ahead: the prefetch range, fetched while the TOC is parsed."""

from __future__ import annotations

import contextlib
import logging

import anyio

from stargz.remote.fetcher import BlobFetcher, fetch_checked
from stargz.remote.regions import Range
from stargz.trace import span

log = logging.getLogger(__name__)


class AheadFetcher:
    """A BlobFetcher whose bytes [0, ``end``) are fetched ahead (:meth:`run`), in ``pieces``
    requests at once. A request within them waits for those pieces and is answered from them
    (one running past ``end`` from them up to it); anything else, or anything a failed piece
    held, goes to ``inner``. The bytes are the raw blob's: whoever reads them still decodes
    and verifies every chunk. :meth:`drop` lets them go once the prefetch has used them."""

    def __init__(self, inner: BlobFetcher, end: int, pieces: int, timeout: float,
                 slots: anyio.CapacityLimiter | None = None) -> None:
        self._inner = inner
        self._slots = slots  # at most this many pieces in flight (shared by the process's layers)
        self._end = min(end, inner.size)
        step = -(-self._end // max(1, pieces))
        self._pieces: list[Range] = [(at, min(at + step, self._end))
                                     for at in range(0, self._end, step)] if step else []
        self._data: dict[int, bytes] = {}  # piece index -> its bytes, once fetched
        self._done = [anyio.Event() for _ in self._pieces]
        self._timeout = timeout
        self._dropped = False

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def end(self) -> int:
        return self._end

    async def run(self) -> None:
        """Fetch the pieces, as many at once as ``slots`` allow (a failed one is left to the
        readers' own fetch)."""
        with span("prefetch_ahead", end=self._end, pieces=len(self._pieces)):
            async with anyio.create_task_group() as group:
                for index in range(len(self._pieces)):
                    group.start_soon(self._fetch_piece, index)

    async def _fetch_piece(self, index: int) -> None:
        try:
            async with self._slots or contextlib.nullcontext():
                (data,) = await fetch_checked(self._inner, [self._pieces[index]],
                                              self._timeout)
            if not self._dropped:
                self._data[index] = data
        except Exception as err:  # never the service's task group's failure: a reader
            # asking for these bytes fetches them itself and gets the error, if any, as usual
            log.debug("prefetch ahead of the TOC: %s (the prefetch fetches it again)", err)
        finally:
            self._done[index].set()

    def drop(self) -> None:
        """Forget the bytes fetched ahead; every request goes to the inner fetcher from now."""
        self._dropped = True
        self._data.clear()

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        heads = [await self._ahead(start, min(end, self._end)) for start, end in ranges]
        # what the pieces do not give: a whole range, or the part of one past their end
        rest = [(start, end) if head is None else (self._end, end)
                for (start, end), head in zip(ranges, heads, strict=True)
                if head is None or end > self._end]
        fetched = iter(await self._inner.fetch(rest) if rest else [])
        answers: list[bytes] = []
        for (_, end), head in zip(ranges, heads, strict=True):
            if head is None:
                answers.append(next(fetched))
            else:
                answers.append(head + next(fetched) if end > self._end else head)
        return answers

    async def _ahead(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) from the pieces, once they are here; None if they can not say."""
        if self._dropped or start < 0 or end > self._end or start >= end:
            return None
        first = next(i for i, (s, e) in enumerate(self._pieces) if s <= start < e)
        last = next(i for i, (s, e) in enumerate(self._pieces) if s < end <= e)
        parts: list[bytes] = []
        for index in range(first, last + 1):
            await self._done[index].wait()
            data = self._data.get(index)
            if data is None:
                return None
            piece_start = self._pieces[index][0]
            parts.append(data[max(start, piece_start) - piece_start:end - piece_start])
        return b"".join(parts) if len(parts) > 1 else parts[0]
