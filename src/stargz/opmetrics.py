"""Durations of named operations, handed to whoever exports metrics (``stargz.fs.metrics``).

    with timed(REMOTE_REGISTRY_GET, digest):
        data = await client.read_blob_ranges(...)

The names are the reference's ``operation_type`` label values (containerd/stargz-snapshotter
fs/metrics/common), so its dashboards read ours. Every layer of the data flow may call this
(standard library only); with no sink added (nothing exports metrics) a timing costs one check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

# milliseconds (stargz_fs_operation_duration_milliseconds)
MOUNT: Final = "mount"
REMOTE_REGISTRY_GET: Final = "remote_registry_get"
STARGZ_HEADER_GET: Final = "stargz_header_get"
STARGZ_FOOTER_GET: Final = "stargz_footer_get"
STARGZ_TOC_GET: Final = "stargz_toc_get"
DESERIALIZE_TOC_JSON: Final = "stargz_toc_json_deserialize"
PREFETCH_TOTAL: Final = "prefetch_total"  # the reference logs these two; we also observe them
BACKGROUND_FETCH_TOTAL: Final = "background_fetch_total"
# microseconds (stargz_fs_operation_duration_microseconds)
NODE_READDIR: Final = "node_readdir"
READ_ON_DEMAND: Final = "read_on_demand"
# counts (stargz_fs_operation_count) and bytes (stargz_fs_bytes_served)
ON_DEMAND_READ_ACCESS_COUNT: Final = "on_demand_read_access_count"
ON_DEMAND_REMOTE_REGISTRY_FETCH_COUNT: Final = "on_demand_remote_registry_fetch_count"
ON_DEMAND_BYTES_SERVED: Final = "on_demand_bytes_served"
ON_DEMAND_BYTES_FETCHED: Final = "on_demand_bytes_fetched"

Sink = Callable[[str, str, float], None]  # (operation, layer digest, milliseconds)
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def observe(operation: str, layer: str, milliseconds: float) -> None:
    for sink in _sinks:
        sink(operation, layer, milliseconds)


class timed:  # lower case: used like a function, as `with timed(...)`
    """Times the block (sync or async) and observes it, failed or not, as the reference does."""

    __slots__ = ("_layer", "_operation", "_start")

    def __init__(self, operation: str, layer: str) -> None:
        self._operation = operation
        self._layer = layer
        self._start = 0.0

    def __enter__(self) -> timed:
        if _sinks:
            self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if _sinks and self._start:
            observe(self._operation, self._layer, (time.perf_counter() - self._start) * 1000)


# Layers pulled in full instead of lazily, by reason (``stargz_layer_fallbacks_total``): counted
# by the snapshotter, exported by whichever metrics endpoint the process serves.
_fallbacks: dict[str, int] = {}
_fallbacks_lock = threading.Lock()


def count_fallback(reason: str) -> None:
    with _fallbacks_lock:
        _fallbacks[reason] = _fallbacks.get(reason, 0) + 1


def fallback_counts() -> dict[str, int]:
    with _fallbacks_lock:
        return dict(_fallbacks)
