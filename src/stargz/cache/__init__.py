"""Caches of verified, uncompressed chunks, keyed by chunk digest."""

from __future__ import annotations

from typing import Protocol

from stargz.cache.disk import DiskCache
from stargz.cache.memory import MemoryCache
from stargz.cache.writer import WriteBehindCache
from stargz.config import CacheConfig


class ChunkCache(Protocol):
    """Verified chunk bytes by digest. Only bytes that matched their digest are ``put``."""

    def peek(self, digest: str) -> bytes | None:
        """The chunk if it can be had without blocking I/O (memory), else None."""
        ...

    def get(self, digest: str) -> bytes | None: ...

    def put(self, digest: str, data: bytes) -> None: ...


class TieredCache:
    """Memory first, then disk; a disk hit is promoted to memory."""

    def __init__(self, memory: MemoryCache, disk: DiskCache | None = None) -> None:
        self.memory = memory
        self.disk = disk

    def peek(self, digest: str) -> bytes | None:
        return self.memory.get(digest)

    def get(self, digest: str) -> bytes | None:
        data = self.memory.get(digest)
        if data is None and self.disk is not None:
            data = self.disk.get(digest)
            if data is not None:
                self.memory.put(digest, data)
        return data

    def put(self, digest: str, data: bytes) -> None:
        self.memory.put(digest, data)
        if self.disk is not None:
            self.disk.put(digest, data)


__all__ = ["ChunkCache", "DiskCache", "MemoryCache", "TieredCache", "WriteBehindCache",
           "cache_from_config", "write_behind_cache"]


def cache_from_config(config: CacheConfig) -> TieredCache:
    """The chunk cache the config describes (memory, plus disk when a directory is set)."""
    disk = None
    if config.directory:
        disk = DiskCache(config.directory, config.disk_limit_bytes, config.verify_on_read)
    return TieredCache(MemoryCache(config.memory_limit_bytes), disk)


def write_behind_cache(config: CacheConfig) -> WriteBehindCache:
    """As :func:`cache_from_config`, with disk writes off the readers' path (the daemons')."""
    disk = None
    if config.directory:
        disk = DiskCache(config.directory, config.disk_limit_bytes, config.verify_on_read)
    return WriteBehindCache(MemoryCache(config.memory_limit_bytes), disk)
