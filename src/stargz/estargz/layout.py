"""Laying tar bytes out in members, compressing members in parallel, writing in order.

A member is the unit of compression (a gzip member or a zstd frame). Members are
numbered as they are closed; their blob offsets are only known once written, so TOC
entries refer to member numbers until the end. Work in flight is bounded, so memory
stays flat whatever the layer's size.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from stargz.estargz.compression import Compression, compress

_BATCH_BYTES = 1 << 20  # small members are compressed in batches to cut per-task overhead
_BATCH_MEMBERS = 256


def _compress_batch(kind: Compression, level: int, members: list[list[bytes]]) -> list[bytes]:
    return [compress(kind, parts[0] if len(parts) == 1 else b"".join(parts), level)
            for parts in members]


class MemberOutput:
    """Compresses members on a thread pool and writes them to ``dst`` in order."""

    def __init__(self, dst: BinaryIO, kind: Compression, level: int, workers: int) -> None:
        self._dst = dst
        self._kind = kind
        self._level = level
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="stargz-compress")
        self._max_inflight = 2 * max(1, workers) + 1
        self._inflight: deque[Future[list[bytes]]] = deque()
        self._batch: list[list[bytes]] = []
        self._batch_bytes = 0
        self.member_offsets: list[int] = []
        self.position = 0
        self.blob_hash = hashlib.sha256()

    def submit(self, parts: list[bytes], size: int) -> None:
        self._batch.append(parts)
        self._batch_bytes += size
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_MEMBERS:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        self._inflight.append(
            self._pool.submit(_compress_batch, self._kind, self._level, self._batch)
        )
        self._batch = []
        self._batch_bytes = 0
        while len(self._inflight) > self._max_inflight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        for blob in self._inflight.popleft().result():
            self.member_offsets.append(self.position)
            self.write_raw(blob)

    def drain(self) -> None:
        """Write everything submitted so far (member offsets are then all known)."""
        self._flush_batch()
        while self._inflight:
            self._write_oldest()

    def write_raw(self, data: bytes) -> None:
        self._dst.write(data)
        self.blob_hash.update(data)
        self.position += len(data)

    def close(self) -> None:
        for future in self._inflight:
            future.cancel()
        self._pool.shutdown(wait=True)


class MemberLayout:
    """Tracks the uncompressed bytes of the member being filled, and the diff_id hash."""

    def __init__(self, output: MemberOutput) -> None:
        self._out = output
        self._parts: list[bytes] = []
        self.open_size = 0  # uncompressed bytes in the open member so far
        self.closed_members = 0  # so the open member's number is this
        self.diff_hash = hashlib.sha256()
        self.uncompressed_size = 0

    def add(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        self.open_size += len(data)
        self.diff_hash.update(data)
        self.uncompressed_size += len(data)

    def new_member(self) -> int:
        """Close the open member (if it holds anything); return the new member's number."""
        if self.open_size:
            self._out.submit(self._parts, self.open_size)
            self.closed_members += 1
            self._parts = []
            self.open_size = 0
        return self.closed_members
