"""Prometheus metrics of the lazy filesystem, per layer (label ``layer`` = layer digest).

Operation counts and read latency are measured here, where the kernel's requests arrive. Bytes
fetched (on demand, prefetch, background) and cache hits/misses are counted by the layer, and
read from its ``stats()`` at scrape time, so the numbers are the layer's own, never a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stargz.errors import ConfigError
from stargz.fs.view import LayerView

_FETCH_KINDS = (
    ("metadata", "fetched_metadata"),  # footer and TOC
    ("on_demand", "fetched_on_demand"),
    ("prefetch", "fetched_prefetch"),
    ("background", "fetched_background"),
)
_READ_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class _LayerStatsCollector(Collector):
    def __init__(self, layers: Callable[[], Sequence[LayerView]]) -> None:
        self._layers = layers

    def collect(self) -> Iterable[Metric]:
        fetched = CounterMetricFamily(
            "stargz_fs_fetched_bytes", "Compressed bytes fetched for a layer, by why",
            labels=["layer", "kind"])
        hits = CounterMetricFamily(
            "stargz_fs_cache_hits", "Chunk reads served from the cache", labels=["layer"])
        misses = CounterMetricFamily(
            "stargz_fs_cache_misses", "Chunk reads that had to fetch", labels=["layer"])
        requests = CounterMetricFamily(
            "stargz_fs_layer_requests", "Chunk requests the layer served", labels=["layer"])
        size = GaugeMetricFamily("stargz_fs_layer_size_bytes", "Compressed layer size",
                                 labels=["layer"])
        held = GaugeMetricFamily("stargz_fs_layer_fetched_size_bytes",
                                 "Compressed bytes of the layer held locally", labels=["layer"])
        for view in self._layers():
            stats = view.stats()
            digest = view.digest
            for kind, attr in _FETCH_KINDS:
                fetched.add_metric([digest, kind], float(getattr(stats, attr, 0)))
            hits.add_metric([digest], float(getattr(stats, "cache_hits", 0)))
            misses.add_metric([digest], float(getattr(stats, "cache_misses", 0)))
            requests.add_metric([digest], float(getattr(stats, "requests", 0)))
            size.add_metric([digest], float(stats.size))
            held.add_metric([digest], float(stats.fetched_size))
        yield from (fetched, hits, misses, requests, size, held)


class FSMetrics:
    """The metrics of one filesystem, in their own registry (one per mount, no globals)."""

    def __init__(self, layers: Callable[[], Sequence[LayerView]]) -> None:
        self.registry = CollectorRegistry()
        self.operations = Counter(
            "stargz_fs_operations", "Filesystem operations served, by layer and operation",
            ["layer", "op"], registry=self.registry)
        self.errors = Counter(
            "stargz_fs_errors", "Filesystem operations that failed, by layer and errno",
            ["layer", "errno"], registry=self.registry)
        self.read_bytes = Counter(
            "stargz_fs_read_bytes", "File bytes handed to readers", ["layer"],
            registry=self.registry)
        self.read_seconds = Histogram(
            "stargz_fs_read_seconds", "Latency of read requests that reached the daemon",
            ["layer"], buckets=_READ_BUCKETS, registry=self.registry)
        self.registry.register(_LayerStatsCollector(layers))

    def serve(self, address: str) -> None:
        """Export on ``HOST:PORT`` over HTTP (a daemon thread)."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics address {address!r} is not HOST:PORT")
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
