"""Named points where the process kills itself with SIGKILL: the crash-safety tests' fault
injection (``STARGZ_KILL_AT=prepare-mounted stargz snapshotter ...``).

Inactive unless ``STARGZ_KILL_AT`` names the point (several: comma-separated) when the process
starts; then a point costs one set lookup. The points are where a crash hurts most: between a
step's durable effects (a directory made, a layer mounted, a row written, a file half written).
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "STARGZ_KILL_AT"
POINTS = frozenset({
    "prepare-created",   # snapshotter: the active snapshot's row and directory exist
    "prepare-mounted",   # snapshotter: the lazy layer is mounted, not yet committed
    "commit-measured",   # snapshotter: the upper dir measured, the commit not yet written
    "remove-forgotten",  # snapshotter: the row is gone, the directory and mount not yet
    "cache-write",       # disk cache: a chunk written to its temp file, not renamed
    "toc-write",         # persisted TOCs: written to the temp file, not renamed
})
_WANTED = frozenset(p for p in os.environ.get(ENV, "").split(",") if p in POINTS)

log = logging.getLogger(__name__)


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``STARGZ_KILL_AT`` names ``name``."""
    if name in _WANTED:
        log.warning("kill point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
