"""A tiered chunk cache whose disk writes happen behind the readers' backs.

A reader gets its chunk as soon as the chunk has verified and sits in memory; writing it to disk
(temp file, fsync, rename) happens in one writer thread. Until written, a chunk is still served
from the write queue, so it is never fetched twice for want of its write. The queue is bounded in
bytes: past the bound, ``put`` waits for the writer (``put`` runs in the decoding worker thread,
never on the event loop), so a disk slower than the network costs speed, not memory.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from stargz.cache.disk import DiskCache
from stargz.cache.memory import MemoryCache
from stargz.errors import CacheError

log = logging.getLogger(__name__)

WRITE_BACKLOG_BYTES = 64 << 20  # chunks waiting for the disk, at most


class WriteBehindCache:
    """Memory first, then the queue of chunks being written, then disk (a disk hit is promoted
    to memory). ``flush`` waits for the queue; ``close`` flushes and stops the writer."""

    def __init__(self, memory: MemoryCache, disk: DiskCache | None = None,
                 backlog_bytes: int = WRITE_BACKLOG_BYTES) -> None:
        self.memory = memory
        self.disk = disk
        self.backlog_bytes = backlog_bytes
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._changed = threading.Condition()
        self._writer = (ThreadPoolExecutor(1, thread_name_prefix="stargz-cache-writer")
                        if disk is not None else None)

    def peek(self, digest: str) -> bytes | None:
        """Without touching the disk: memory or the write queue."""
        data = self.memory.get(digest)
        if data is None:
            data = self._pending.get(digest)
        return data

    def get(self, digest: str) -> bytes | None:
        data = self.peek(digest)
        if data is None and self.disk is not None:
            data = self.disk.get(digest)
            if data is not None:
                self.memory.put(digest, data)
        return data

    def put(self, digest: str, data: bytes) -> None:
        self.memory.put(digest, data)
        if self._writer is None:
            return
        with self._changed:
            if digest in self._pending:
                return
            while self._pending_bytes > self.backlog_bytes:
                self._changed.wait()
            self._pending[digest] = data
            self._pending_bytes += len(data)
        self._writer.submit(self._write, digest, data)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def flush(self) -> None:
        """Wait until every chunk put so far is on disk (or failed to be written)."""
        with self._changed:
            while self._pending:
                self._changed.wait()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def _write(self, digest: str, data: bytes) -> None:
        assert self.disk is not None
        try:
            self.disk.put(digest, data)
        except CacheError as err:  # the chunk stays served from memory while it is there
            log.warning("chunk cache: %s", err)
        finally:
            with self._changed:
                self._pending.pop(digest, None)
                self._pending_bytes -= len(data)
                self._changed.notify_all()
