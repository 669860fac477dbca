"""Per-layer counters, shown by the filesystem as JSON and Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stargz.remote.regions import SpanSet

FetchKind = Literal["metadata", "on_demand", "prefetch", "background"]


@dataclass
class LayerStats:
    """Compressed bytes fetched by purpose, requests, and chunk cache hits of reads."""

    size: int  # compressed blob size
    fetched_metadata: int = 0  # footer and TOC
    fetched_on_demand: int = 0
    fetched_prefetch: int = 0
    fetched_background: int = 0
    requests: int = 0
    fetches: dict[str, int] = field(default_factory=dict)  # requests by kind (FetchKind)
    # Chunks an on-demand read looked up itself: found verified in a cache, or fetched. A read
    # that joins a fetch already running (another read's, the prefetch's) counts in neither.
    cache_hits: int = 0
    cache_misses: int = 0
    prefetch_complete: bool = False
    background_complete: bool = False
    last_error: str = ""
    held: SpanSet = field(default_factory=SpanSet, repr=False)

    @property
    def fetched_size(self) -> int:
        """Compressed bytes of the blob fetched or found cached at least once."""
        return min(self.held.total, self.size)

    @property
    def fetched_percent(self) -> float:
        return 100.0 * self.fetched_size / self.size if self.size else 100.0

    def count_fetch(self, kind: FetchKind, nbytes: int) -> None:
        self.requests += 1
        self.fetches[kind] = self.fetches.get(kind, 0) + 1
        name = f"fetched_{kind}"
        setattr(self, name, getattr(self, name) + nbytes)

    def as_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "fetchedSize": self.fetched_size,
            "fetchedPercent": round(self.fetched_percent, 2),
            "fetchedMetadata": self.fetched_metadata,
            "fetchedOnDemand": self.fetched_on_demand,
            "fetchedPrefetch": self.fetched_prefetch,
            "fetchedBackground": self.fetched_background,
            "requests": self.requests,
            "cacheHits": self.cache_hits,
            "cacheMisses": self.cache_misses,
            "prefetchComplete": self.prefetch_complete,
            "backgroundComplete": self.background_complete,
        }
