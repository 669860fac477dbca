"""Our snapshotter as containerd 1.6's proxy snapshotter: pull, run, restart, ls, rm — all real."""

from __future__ import annotations

import json

import pytest

from tests.support.containerd import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    MOTD,
    Stack,
    image_fixture,
    registry_fixture,
    stack_fixture,
)

pytestmark = pytest.mark.integration


def _snapshots(stack: Stack) -> list[list[str]]:
    out = stack.containerd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout
    return [line.split() for line in out.splitlines()[1:]]


def test_pull_and_run_two_layer_image(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    committed = [row for row in _snapshots(stack) if row[-1] == "Committed"]
    assert len(committed) == 2  # one per layer, the second on top of the first

    out = stack.containerd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "stargz",
        image,
        "t-run",
        "sh",
        "-c",
        "cat /etc/motd /etc/layer2; echo written > /tmp/w; cat /tmp/w",
    ).stdout
    assert out == MOTD + LAYER2_TEXT + "written\n"
    # --rm removed the container's active snapshot: only the layers remain
    assert [row[-1] for row in _snapshots(stack)] == ["Committed", "Committed"]


def test_layers_are_stored_like_overlayfs(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    dirs = sorted((stack.snapshotter.root / "snapshots").iterdir())
    tops = [d for d in dirs if (d / "fs/etc/layer2").exists()]
    bases = [d for d in dirs if (d / "fs/bin/busybox").exists()]
    assert len(tops) == 1 and len(bases) == 1
    assert (bases[0] / "fs/etc/motd").read_text() == MOTD
    assert (tops[0] / "fs/etc/layer2").read_text() == LAYER2_TEXT
    assert not (tops[0] / "fs/bin/busybox").exists()  # the upper layer holds only its diff


def test_restart_between_pull_and_run_keeps_everything(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    before = _snapshots(stack)
    stack.restart_snapshotter()
    out = stack.containerd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "t-restart", "cat", "/etc/layer2"
    )
    assert out == LAYER2_TEXT
    assert _snapshots(stack) == before


def test_snapshots_ls_prepare_rm(stack: Stack, image: str) -> None:
    ctd = stack.containerd
    ctd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    rows = _snapshots(stack)
    # rows are KEY [PARENT] KIND: the layer with a parent is the top one
    top, base = next(r[0] for r in rows if len(r) == 3), next(r[0] for r in rows if len(r) == 2)

    ctd.ctr("snapshots", "--snapshotter", "stargz", "prepare", "scratch", top)
    mounts = ctd.ctr("snapshots", "--snapshotter", "stargz", "mounts", "/mnt", "scratch").stdout
    assert "overlay" in mounts and "lowerdir=" in mounts and "upperdir=" in mounts
    info = json.loads(ctd.ctr("snapshots", "--snapshotter", "stargz", "info", "scratch").stdout)
    assert info["Kind"] == "Active" and info["Parent"] == top

    refused = ctd.ctr("snapshots", "--snapshotter", "stargz", "rm", base, check=False)
    assert refused.returncode != 0 and "child" in refused.stderr

    ctd.ctr("snapshots", "--snapshotter", "stargz", "rm", "scratch")
    assert "scratch" not in [r[0] for r in _snapshots(stack)]


def test_killed_snapshotter_comes_back_with_everything(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    before = _snapshots(stack)
    proc = stack.snapshotter.proc
    assert proc is not None
    proc.kill()  # no clean shutdown: SQLite's journal must carry us
    proc.wait()
    stack.snapshotter.proc = None
    stack.snapshotter.start()
    out = stack.containerd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "t-killed", "cat", "/etc/motd"
    )
    assert out == MOTD
    assert _snapshots(stack) == before
