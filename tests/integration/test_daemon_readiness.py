"""systemd readiness (sd_notify): the snapshotter says READY=1 only once its lazy worker has
loaded what a first Prepare needs, so containerd (ordered after it, Type=notify) starts when a
pull no longer shares the interpreter with those imports; without lazy layers it is ready when
its socket is. The store's readiness is what every store test's StoreProcess.start waits for."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz import trace
from tests.support.containerd import SnapshotterProcess

pytestmark = pytest.mark.integration


def _trace_phases(log: str) -> dict[str, dict[str, str]]:
    """The last trace record of each phase in a daemon's log."""
    records = (trace.parse(line[line.index(trace.PREFIX):]) for line in log.splitlines()
               if trace.PREFIX in line)
    return {record["phase"]: record for record in records if record is not None}


def _started(tmp_path: Path, config: str) -> SnapshotterProcess:
    (tmp_path / "config.toml").write_text(config)
    snap = SnapshotterProcess(tmp_path / "snap.sock", tmp_path / "root", tmp_path / "snap.log",
                              extra_args=["--trace", "--config", str(tmp_path / "config.toml")],
                              log_level="info", wait_ready=True)
    snap.start()  # returns at READY=1, or raises
    return snap


def test_ready_once_the_lazy_worker_has_loaded(tmp_path: Path) -> None:
    snap = _started(tmp_path, "")
    try:
        said_ready = snap.log_text()  # what the daemon had logged when READY=1 arrived
    finally:
        assert snap.stop() == 0
    phases = _trace_phases(said_ready)
    assert {"startup_socket_ready", "startup_lazy_worker", "startup_preload",
            "startup_ready"} <= phases.keys(), said_ready
    preload = phases["startup_preload"]
    preload_end = float(preload["t"]) + float(preload["ms"])
    assert float(phases["startup_ready"]["t"]) >= preload_end
    assert float(phases["startup_socket_ready"]["t"]) < float(phases["startup_ready"]["t"])
    assert "told systemd the snapshotter is ready" in said_ready


def test_ready_at_once_without_lazy_layers(tmp_path: Path) -> None:
    snap = _started(tmp_path, "[lazy]\nenabled = false\n")
    try:
        said_ready = snap.log_text()
    finally:
        assert snap.stop() == 0
    phases = _trace_phases(said_ready)
    assert "startup_ready" in phases and "startup_lazy_worker" not in phases, said_ready
