"""Prometheus metrics of the lazy filesystem, under the reference's names and labels.

The reference's (containerd/stargz-snapshotter fs/metrics), so its dashboards work unchanged:
``stargz_fs_operation_duration_milliseconds`` and ``_microseconds`` (histograms),
``stargz_fs_operation_count`` and ``stargz_fs_bytes_served``, each labelled ``operation_type`` and
``layer`` (operation names in ``stargz.opmetrics``), and ``stargz_fs_layer_size_bytes``,
``stargz_fs_layer_fetched_size_bytes``, ``stargz_fs_layer_prefetch_size_bytes`` labelled
``digest`` and ``mountpoint``. The Go client exposes a counter under its own name, the Python
one adds ``_total``: the reference's counters are exposed as gauges to keep their names.
Ours beside them: ``stargz_fs_operations_total`` (FUSE requests by op), ``stargz_fs_errors_total``,
``stargz_layer_fallbacks_total`` (layers downloaded in full, by ``reason``),
``stargz_fs_fetched_bytes_total`` (by why), cache hits/misses and requests per layer.

Reads and readdirs are measured here, where the kernel's requests arrive; the one-off durations
(mount, registry GETs, footer and TOC) come from ``stargz.opmetrics`` while metrics are served;
bytes fetched and cache hits are the layer's own counters, read from its ``stats()`` at scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stargz import opmetrics
from stargz.errors import ConfigError
from stargz.fs.view import LayerView

Named = Callable[[], Sequence[tuple[str, LayerView]]]  # (directory, layer) of each served layer
_FETCH_KINDS = (
    ("metadata", "fetched_metadata"),  # footer and TOC
    ("on_demand", "fetched_on_demand"),
    ("prefetch", "fetched_prefetch"),
    ("background", "fetched_background"),
)
# the reference's buckets
_MS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_US_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_OPERATION_LABELS = ["operation_type", "layer"]


class _Totals:
    """Counts and bytes by (operation_type, layer), bumped by the FUSE loop, read at scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], float] = {}
        self.bytes: dict[tuple[str, str], float] = {}

    def add(self, table: dict[tuple[str, str], float], key: tuple[str, str], n: float) -> None:
        with self._lock:
            table[key] = table.get(key, 0.0) + n

    def snapshot(self) -> tuple[list[tuple[tuple[str, str], float]], ...]:
        with self._lock:
            return list(self.counts.items()), list(self.bytes.items())


class _LayerStatsCollector(Collector):
    def __init__(self, layers: Named, totals: _Totals) -> None:
        self._layers = layers
        self._totals = totals

    def collect(self) -> Iterable[Metric]:
        count = GaugeMetricFamily(
            "stargz_fs_operation_count", "The count of stargz snapshotter operations. "
            "Broken down by operation type and layer sha.", labels=_OPERATION_LABELS)
        served = GaugeMetricFamily(
            "stargz_fs_bytes_served", "The number of bytes served per stargz snapshotter "
            "operations. Broken down by operation type and layer sha.", labels=_OPERATION_LABELS)
        counts, nbytes = self._totals.snapshot()
        for (operation, layer), value in counts:
            count.add_metric([operation, layer], value)
        for (operation, layer), value in nbytes:
            served.add_metric([operation, layer], value)
        layers = self._layers()
        for _directory, view in layers:
            stats = view.stats()
            fetches = getattr(stats, "fetches", {})
            count.add_metric([opmetrics.ON_DEMAND_REMOTE_REGISTRY_FETCH_COUNT, view.digest],
                             float(fetches.get("on_demand", 0)))
            served.add_metric([opmetrics.ON_DEMAND_BYTES_FETCHED, view.digest],
                              float(getattr(stats, "fetched_on_demand", 0)))
        yield count
        yield served
        yield from _layer_sizes(layers)
        yield from _our_layer_counters(layers)
        yield _fallbacks()


def _fallbacks() -> Metric:
    """Layers the snapshotter pulled in full instead of lazily, by reason (never silent)."""
    family = CounterMetricFamily("stargz_layer_fallbacks", "Layers downloaded in full instead "
                                 "of mounted lazily, by reason", labels=["reason"])
    for reason, count in sorted(opmetrics.fallback_counts().items()):
        family.add_metric([reason], float(count))
    return family


def _layer_sizes(layers: Sequence[tuple[str, LayerView]]) -> Iterable[Metric]:
    """The reference's per-layer sizes (labels digest, mountpoint)."""
    labels = ["digest", "mountpoint"]
    size = GaugeMetricFamily("stargz_fs_layer_size_bytes", "Total size of the layer",
                             labels=labels)
    fetched = GaugeMetricFamily("stargz_fs_layer_fetched_size_bytes",
                                "Total fetched size of the layer", labels=labels)
    prefetched = GaugeMetricFamily("stargz_fs_layer_prefetch_size_bytes",
                                   "Total prefetched size of the layer", labels=labels)
    for directory, view in layers:
        stats = view.stats()
        size.add_metric([view.digest, directory], float(stats.size))
        fetched.add_metric([view.digest, directory], float(stats.fetched_size))
        prefetched.add_metric([view.digest, directory],
                              float(getattr(stats, "fetched_prefetch", 0)))
    return size, fetched, prefetched


def _our_layer_counters(layers: Sequence[tuple[str, LayerView]]) -> Iterable[Metric]:
    fetched = CounterMetricFamily(
        "stargz_fs_fetched_bytes", "Compressed bytes fetched for a layer, by why",
        labels=["layer", "kind"])
    hits = CounterMetricFamily(
        "stargz_fs_cache_hits", "Chunk reads served from the cache", labels=["layer"])
    misses = CounterMetricFamily(
        "stargz_fs_cache_misses", "Chunk reads that had to fetch", labels=["layer"])
    requests = CounterMetricFamily(
        "stargz_fs_layer_requests", "Chunk requests the layer served", labels=["layer"])
    for _directory, view in layers:
        stats = view.stats()
        digest = view.digest
        for kind, attr in _FETCH_KINDS:
            fetched.add_metric([digest, kind], float(getattr(stats, attr, 0)))
        hits.add_metric([digest], float(getattr(stats, "cache_hits", 0)))
        misses.add_metric([digest], float(getattr(stats, "cache_misses", 0)))
        requests.add_metric([digest], float(getattr(stats, "requests", 0)))
    return fetched, hits, misses, requests


class FSMetrics:
    """The metrics of one filesystem, in their own registry (one per mount)."""

    def __init__(self, layers: Named) -> None:
        self.registry = CollectorRegistry()
        self.operations = Counter(
            "stargz_fs_operations", "Filesystem operations served, by layer and operation",
            ["layer", "op"], registry=self.registry)
        self.errors = Counter(
            "stargz_fs_errors", "Filesystem operations that failed, by layer and errno",
            ["layer", "errno"], registry=self.registry)
        self.duration_ms = Histogram(
            "stargz_fs_operation_duration_milliseconds", "Latency in milliseconds of stargz "
            "snapshotter operations. Broken down by operation type and layer sha.",
            _OPERATION_LABELS, buckets=_MS_BUCKETS, registry=self.registry)
        self.duration_us = Histogram(
            "stargz_fs_operation_duration_microseconds", "Latency in microseconds of stargz "
            "snapshotter operations. Broken down by operation type and layer sha.",
            _OPERATION_LABELS, buckets=_US_BUCKETS, registry=self.registry)
        self._totals = _Totals()
        self._read_latency: dict[str, Histogram] = {}  # labels() costs a lock: one per layer
        self.registry.register(_LayerStatsCollector(layers, self._totals))

    def read_done(self, layer: str, seconds: float, nbytes: int) -> None:
        """One FUSE read served: read_on_demand, its access count and the bytes served."""
        child = self._read_latency.get(layer)
        if child is None:
            child = self._read_latency[layer] = self.duration_us.labels(
                opmetrics.READ_ON_DEMAND, layer)
        child.observe(seconds * 1e6)
        self._totals.add(self._totals.counts, (opmetrics.ON_DEMAND_READ_ACCESS_COUNT, layer), 1)
        self._totals.add(self._totals.bytes, (opmetrics.ON_DEMAND_BYTES_SERVED, layer), nbytes)

    def readdir_done(self, layer: str, seconds: float) -> None:
        self.duration_us.labels(opmetrics.NODE_READDIR, layer).observe(seconds * 1e6)

    def observe_ms(self, operation: str, layer: str, milliseconds: float) -> None:
        """An ``opmetrics`` sink: mount, registry GETs, footer/TOC and the like."""
        self.duration_ms.labels(operation, layer).observe(milliseconds)

    def serve(self, address: str) -> None:
        """Export on ``HOST:PORT`` over HTTP (a daemon thread); from now on this process's
        operation timings (``stargz.opmetrics``) are observed here too."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics address {address!r} is not HOST:PORT")
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        opmetrics.add_sink(self.observe_ms)
