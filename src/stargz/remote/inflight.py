"""Share one in-flight fetch between concurrent readers of the same key."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class InFlight:
    """Futures by key: the first reader creates one and fills it, later readers await it.

    A key is forgotten once its future is settled, success or failure, so a failed fetch is
    retried by the next reader instead of poisoning the key."""

    def __init__(self) -> None:
        self._futures: dict[Hashable, asyncio.Future[bytes]] = {}

    def get(self, key: Hashable) -> asyncio.Future[bytes] | None:
        return self._futures.get(key)

    def claim(self, key: Hashable) -> asyncio.Future[bytes]:
        """Register a new future for ``key`` (the caller must settle it)."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        return future

    def resolve(self, key: Hashable, data: bytes) -> None:
        future = self._futures.pop(key, None)
        if future is not None and not future.done():
            future.set_result(data)

    def fail(self, key: Hashable, error: BaseException) -> None:
        future = self._futures.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)
            # Nobody may be waiting: mark the exception seen so asyncio does not warn.
            future.add_done_callback(_consume)

    def __len__(self) -> int:
        return len(self._futures)


def _consume(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()
