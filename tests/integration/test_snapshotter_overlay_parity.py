"""Differential test: the same ctr snapshot commands against containerd's own overlayfs snapshotter
and against ours must give the same results (paths normalized, timestamps dropped)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import NO_BACKGROUND_GC, Containerd, SnapshotterProcess, Stack

pytestmark = pytest.mark.integration

# (ctr snapshots arguments, file to write into the snapshot's upper dir first)
SCRIPT: list[tuple[str, ...]] = [
    ("prepare", "a"),
    ("write", "a", "etc/data", "x" * 10000),
    ("mounts", "/mnt/x", "a"),
    ("usage", "a"),
    ("commit", "base", "a"),
    ("usage", "base"),
    ("prepare", "b", "base"),
    ("mounts", "/mnt/x", "b"),
    ("write", "b", "etc/more", "y"),
    ("view", "v", "base"),
    ("mounts", "/mnt/x", "v"),
    ("info", "base"),
    ("rm", "base"),
    ("prepare", "b", "base"),
    ("prepare", "c", "nope"),
    ("view", "c", "b"),
    ("mounts", "/mnt/x", "base"),
    ("mounts", "/mnt/x", "nope"),
    ("commit", "x", "v"),
    ("commit", "x", "nope"),
    ("commit", "base", "b"),
    ("label", "base", "foo=bar"),
    ("info", "base"),
    ("commit", "top", "b"),
    ("usage", "top"),
    ("view", "v2", "top"),
    ("mounts", "/mnt/x", "v2"),
    ("prepare", "c2", "top"),
    ("mounts", "/mnt/x", "c2"),
    ("ls",),
    ("tree",),
    ("rm", "v2"),
    ("rm", "c2"),
    ("rm", "top"),
    ("rm", "v"),
    ("rm", "top"),
    ("ls",),
]
ERROR_CLASS = re.compile(
    r": (not found|already exists|failed precondition|invalid argument|unavailable)$"
)


@pytest.fixture(scope="module")
def parity_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("parity")
    snap = SnapshotterProcess(work / "stargz.sock", work / "snap-root", work / "snap.log")
    snap.start()
    ctd = Containerd(work / "containerd", snap.address, extra_config=NO_BACKGROUND_GC)
    ctd.start()
    try:
        yield Stack(snap, ctd)
    finally:
        ctd.stop()
        snap.stop()
        shutil.rmtree(work, ignore_errors=True)


def replay(stack: Stack, snapshotter: str, root: Path) -> list[str]:
    """Run SCRIPT with one snapshotter; each step's outcome as comparable text."""
    outcomes = []
    for step in SCRIPT:
        if step[0] == "write":
            upper = _upper_dir(stack, snapshotter, step[1])
            (upper / step[2]).parent.mkdir(parents=True, exist_ok=True)
            (upper / step[2]).write_text(step[3])
            continue
        result = stack.containerd.ctr("snapshots", "--snapshotter", snapshotter, *step, check=False)
        if result.returncode != 0:
            error = ERROR_CLASS.search(result.stderr.strip())
            kind = error.group(1) if error else repr(result.stderr)
            outcomes.append(f"{step}: error {kind}")
            continue
        outcomes.append(f"{step}: {_normalize(step[0], result.stdout, root)}")
    return outcomes


def _upper_dir(stack: Stack, snapshotter: str, key: str) -> Path:
    line = stack.containerd.ctr("snapshots", "--snapshotter", snapshotter, "mounts", "/m", key)
    text = line.stdout
    found = re.search(r"upperdir=([^,\s]+)", text) or re.search(r"-t bind (\S+) ", text)
    assert found, text
    return Path(found.group(1))


def _normalize(command: str, out: str, root: Path) -> str:
    out = out.replace(str(root), "ROOT")
    if command == "info":
        info = json.loads(out)
        info.pop("Created"), info.pop("Updated")
        info.get("Labels", {}).pop("containerd.io/gc.root", None)
        return json.dumps(info, sort_keys=True)
    if command == "label":  # ctr prints a Go map: order varies from run to run
        return ",".join(sorted(p for p in out.strip().split(",") if "gc.root" not in p))
    return " ".join(out.split())


def test_same_answers_as_containerds_overlayfs(parity_stack: Stack) -> None:
    overlay_root = parity_stack.containerd.workdir / "root/io.containerd.snapshotter.v1.overlayfs"
    theirs = replay(parity_stack, "overlayfs", overlay_root)
    ours = replay(parity_stack, "stargz", parity_stack.snapshotter.root)
    assert ours == theirs
    # and the script did exercise each kind of answer
    joined = "\n".join(theirs)
    for kind in ("not found", "already exists", "failed precondition", "invalid argument"):
        assert f"error {kind}" in joined
    assert "lowerdir=ROOT/snapshots/2/fs:ROOT/snapshots/1/fs" in joined
