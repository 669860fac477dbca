"""Layers opened from their registries, shared: one open Layer per digest, with use counts.

    pool = LayerPool(registry, cache, config)
    layer = await pool.acquire(repo_ref, digest, toc_digest)   # verified TOC, prefetch started
    ...
    await pool.release(digest)                                 # closed when nobody holds it
    await pool.aclose()

Two images sharing a layer get the same Layer (one fetch, one set of stats); two layers sharing
chunks share them through the cache, which the caller builds (``make_cache(config)``).
"""

from __future__ import annotations

import asyncio
import logging

from stargz.cache import DiskCache, MemoryCache, TieredCache
from stargz.config import Config
from stargz.errors import InvalidArgumentError
from stargz.layer.layer import Layer
from stargz.layer.sources import mount_from_registry
from stargz.registry.client import RegistryClient
from stargz.registry.reference import Reference

log = logging.getLogger(__name__)


def make_cache(config: Config) -> TieredCache:
    """The memory LRU, over the disk cache when ``config.cache.directory`` is set."""
    memory = MemoryCache(config.cache.memory_limit_bytes)
    disk = None
    if config.cache.directory:
        disk = DiskCache(config.cache.directory, config.cache.disk_limit_bytes,
                         config.cache.verify_on_read)
    return TieredCache(memory, disk)


class LayerPool:
    """Lazily pulled layers by digest; the registry client stays the caller's to close."""

    def __init__(self, registry: RegistryClient, cache: TieredCache, config: Config) -> None:
        self.registry = registry
        self.cache = cache
        self.config = config
        self._opening: dict[str, asyncio.Task[Layer]] = {}
        self._uses: dict[str, int] = {}

    async def acquire(self, repo_ref: Reference, digest: str, toc_digest: str,
                      size: int | None = None) -> Layer:
        """The verified layer ``digest`` of ``repo_ref``, opened once however often asked for
        (concurrent callers share one open). A failed open is retried by the next caller."""
        if not toc_digest:
            raise InvalidArgumentError(f"layer {digest} has no TOC digest: it can not be verified")
        task = self._opening.get(digest)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(mount_from_registry(
                self.registry, repo_ref.repo_only(), digest, toc_digest, self.cache,
                self.config, size))
            self._opening[digest] = task
        layer = await asyncio.shield(task)
        if layer.blob.toc_digest != toc_digest:
            raise InvalidArgumentError(
                f"layer {digest} is open with TOC {layer.blob.toc_digest}, not {toc_digest}")
        self._uses[digest] = self._uses.get(digest, 0) + 1
        return layer

    def uses(self, digest: str) -> int:
        return self._uses.get(digest, 0)

    async def release(self, digest: str) -> None:
        """One use fewer; the last one closes the layer (stops its fetches)."""
        uses = self._uses.get(digest, 0) - 1
        if uses > 0:
            self._uses[digest] = uses
            return
        self._uses.pop(digest, None)
        task = self._opening.pop(digest, None)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            await task.result().close()
            log.info("layer %s released", digest)

    async def aclose(self) -> None:
        """Close every layer, held or still opening."""
        tasks = list(self._opening.values())
        self._opening.clear()
        self._uses.clear()
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                await task.result().close()
