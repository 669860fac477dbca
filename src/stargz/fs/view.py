"""What the filesystem needs from a layer, and a local-blob implementation of it.

The filesystem core is written against :class:`LayerView` (a Protocol), so any object with a
verified blob for metadata and an async ``read`` for file bytes can be mounted: the lazy
``stargz.layer.Layer`` (bytes fetched from a registry on demand) or :class:`BlobLayerView` (a
blob already on disk, read through the verified reader).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from stargz.estargz.chunks import Chunk
from stargz.estargz.reader import VerifiedBlob


class LayerStatsView(Protocol):
    """Counters a layer reports; the filesystem shows them as JSON and Prometheus metrics.

    Only ``size`` and ``fetched_size`` are required; the optional counters (fetched_on_demand,
    fetched_prefetch, fetched_background, cache_hits, cache_misses, requests, last_error) are
    read with ``getattr`` so a layer that does not track them still mounts."""

    @property
    def size(self) -> int: ...  # compressed blob size

    @property
    def fetched_size(self) -> int: ...  # compressed bytes held locally (fetched or cached)


class LayerView(Protocol):
    """One layer as the filesystem sees it."""

    @property
    def digest(self) -> str: ...  # the layer (blob) digest, "sha256:..."

    @property
    def blob(self) -> VerifiedBlob: ...

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` verified bytes of regular file ``path`` from ``offset``."""
        ...

    def stats(self) -> LayerStatsView: ...


@dataclass
class BlobStats:
    size: int
    fetched_size: int = 0
    fetched_on_demand: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    requests: int = 0
    last_error: str = ""


class BlobLayerView:
    """A layer whose blob is local (any RangeSource): chunks decoded and verified on read.

    A few decoded chunks are kept, because the kernel reads a file in pieces smaller than a chunk
    and decoding a chunk again for every piece would make a sequential read quadratic."""

    def __init__(self, digest: str, blob: VerifiedBlob, keep_chunks: int = 8) -> None:
        self._digest = digest
        self._blob = blob
        self._keep = keep_chunks
        self._decoded: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._fetched: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._stats = BlobStats(size=blob.source.size)

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def blob(self) -> VerifiedBlob:
        return self._blob

    def stats(self) -> BlobStats:
        return self._stats

    def close(self) -> None:
        """Close the blob's source if it holds a file."""
        close = getattr(self._blob.source, "close", None)
        if callable(close):
            close()

    async def read(self, path: str, offset: int, size: int) -> bytes:
        return await asyncio.to_thread(self.read_sync, path, offset, size)

    def read_sync(self, path: str, offset: int, size: int) -> bytes:
        try:
            self._blob.chunks(path)  # NotFoundError unless a regular file
            entry = self._blob.lookup(path)
            end = min(entry.size if entry else 0, offset + size)
            parts: list[bytes] = []
            pos = offset
            while pos < end:
                chunk = self._blob.chunk_at(path, pos)
                data = self._chunk(chunk)
                parts.append(data[pos - chunk.chunk_offset : end - chunk.chunk_offset])
                pos = chunk.end
        except Exception as exc:
            self._stats.last_error = str(exc)
            raise
        return b"".join(parts)

    def _chunk(self, chunk: Chunk) -> bytes:
        key = (chunk.compressed_offset, chunk.inner_offset)
        with self._lock:
            self._stats.requests += 1
            data = self._decoded.get(key)
            if data is not None:
                self._decoded.move_to_end(key)
                self._stats.cache_hits += 1
                return data
            self._stats.cache_misses += 1
        data = self._blob.read_chunk(chunk)  # verified against its chunkDigest
        with self._lock:
            self._decoded[key] = data
            while len(self._decoded) > self._keep:
                self._decoded.popitem(last=False)
            member = (chunk.compressed_offset, chunk.compressed_end)
            if member not in self._fetched:
                self._fetched.add(member)
                fetched = chunk.compressed_end - chunk.compressed_offset
                self._stats.fetched_size += fetched
                self._stats.fetched_on_demand += fetched
        return data
