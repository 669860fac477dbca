"""Crash safety, for real: the snapshotter SIGKILLs itself at a named point of Prepare, Commit,
Remove or a cache write (STARGZ_KILL_AT, stargz.killpoints) while containerd pulls and runs an
image; started again without it, it repairs what the crash left (stale FUSE mount, half-written
files, directories no snapshot owns) and the image pulls and runs with the right bytes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from stargz.killpoints import ENV
from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    estargz_image_fixture,
    image_fixture,
    registry_fixture,
    running_stack,
)
from tests.support.containerd import wait_for_socket

pytestmark = pytest.mark.integration

CASES = [  # (kill point, image: estargz pulls lazily, the plain one is downloaded and committed)
    ("prepare-created", "estargz"),
    ("prepare-mounted", "estargz"),
    ("toc-write", "estargz"),
    ("cache-write", "estargz"),
    ("remove-forgotten", "estargz"),
    ("commit-measured", "plain"),
]


def _config(work: Path, registry: str) -> Path:
    config = work / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{registry}"]\n')
    return config


def _rpull_once_containerd_reconnects(stack: Stack, ref: str) -> None:
    """containerd's gRPC client of the killed snapshotter backs off between dials and fails
    calls meanwhile ("connection refused"): retry the pull until it reaches the new one."""
    deadline = time.monotonic() + 60
    while True:
        result = stack.rpull(ref, check=False)
        if result.returncode == 0:
            return
        if "not reachable" not in result.stderr or time.monotonic() > deadline:
            stack.rpull(ref)  # raises with the error and the snapshotter's log
            return
        time.sleep(0.5)


def _left_behind(root: Path) -> list[str]:
    """Half-written cache/TOC files, and snapshot directories no row owns."""
    temps = [p.name for p in (root / "cache").rglob(".tmp-*")]
    with sqlite3.connect(f"file:{root / 'metadata.sqlite'}?mode=ro", uri=True) as db:
        ids = {str(row[0]) for row in db.execute("SELECT id FROM snapshots")}
    stale = [p.name for p in (root / "snapshots").iterdir() if p.name not in ids]
    return temps + stale


@pytest.mark.parametrize(("point", "kind"), CASES)
def test_a_kill_at_each_step_is_repaired_by_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str, image: str,
        estargz_image: str, point: str, kind: str) -> None:
    ref = estargz_image if kind == "estargz" else image
    monkeypatch.setenv(ENV, point)
    extra = ["--config", str(_config(tmp_path, registry))]
    with running_stack(tmp_path, extracting=False, extra_args=extra) as stack:
        monkeypatch.delenv(ENV)
        snap = stack.snapshotter
        assert snap.proc is not None
        stack.rpull(ref, check=False)
        if snap.proc.poll() is None:  # the kill point is in the run (cache write, remove)
            stack.containerd.ctr("run", "--rm", "--snapshotter", "stargz", ref, "t-first",
                                 *WORKLOAD, check=False)
        assert snap.proc.wait(timeout=60) == -9, snap.log_text()[-3000:]
        assert f"kill point {point}: SIGKILL" in snap.log_text()

        snap.start()
        wait_for_socket(snap.address, snap.proc, "snapshotter")
        _rpull_once_containerd_reconnects(stack, ref)
        out = stack.containerd.ctr_retry(
            "run", "--rm", "--snapshotter", "stargz", ref, "t-after", *WORKLOAD)
        assert out == MOTD + LAYER2_TEXT
        if kind == "estargz":
            assert "mounted lazily at" in snap.log_text()
        assert _left_behind(snap.root) == [], snap.log_text()[-3000:]
    # stopped: no FUSE mount left behind, not even the dead one of the killed daemon
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(tmp_path) in line]


def test_kill_points_are_off_unless_named() -> None:
    from stargz import killpoints

    assert not killpoints._WANTED  # the test run sets none
    killpoints.kill_point("cache-write")  # and so nothing happens
