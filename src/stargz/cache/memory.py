"""An in-memory LRU of verified uncompressed chunks, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict


class MemoryCache:
    """Chunks by digest; the least recently used go first when ``limit_bytes`` is passed.

    Thread-safe: layers read it from the event loop and from worker threads."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def peek(self, digest: str) -> bytes | None:
        return self.get(digest)

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.limit_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[digest] = data
            self._bytes += len(data)
            while self._bytes > self.limit_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)
