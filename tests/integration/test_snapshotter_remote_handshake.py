"""The remote-snapshot handshake with real containerd 1.6 and ctr-remote rpull.

The hook is tests.support.containerd.ExtractingLayers (the lazy store is not plugged in yet):
what is tested is the snapshotter's and containerd's side — ALREADY_EXISTS, the metadata layer
finding the committed snapshot by its labels, runs on hook directories, restart, removal.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    MOTD,
    Containerd,
    SnapshotterProcess,
    Stack,
    image_fixture,
    registry_fixture,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def remote_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    work = tmp_path_factory.mktemp("remote")
    layers = work / "layers"
    snap = SnapshotterProcess(
        work / "stargz.sock",
        work / "snap-root",
        work / "snap.log",
        module="tests.support.containerd",
        extra_args=["--layers", str(layers)],
    )
    snap.start()
    ctd = Containerd(work / "containerd", snap.address)
    ctd.start()
    try:
        yield Stack(snap, ctd), layers
    finally:
        ctd.stop()
        snap.stop()
        shutil.rmtree(work, ignore_errors=True)


def calls(layers: Path) -> list[dict[str, str]]:
    lines = (layers / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_rpull_commits_remote_snapshots_and_run_uses_them(
    remote_stack: tuple[Stack, Path], image: str
) -> None:
    stack, layers = remote_stack
    ctd = stack.containerd
    ctd.ctr("images", "rpull", "--plain-http", image, tool="ctr-remote")

    prepared = [c for c in calls(layers) if c["call"] == "prepare"]
    assert len(prepared) == 2 and prepared[0]["parents"] == ""
    assert prepared[1]["parents"] != ""  # the upper layer is told its chain
    listing = ctd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout.splitlines()[1:]
    assert len(listing) == 2
    for row in listing:
        name = row.split()[0]
        info = json.loads(ctd.ctr("snapshots", "--snapshotter", "stargz", "info", name).stdout)
        assert info["Kind"] == "Committed"
        assert info["Labels"]["containerd.io/snapshot/remote"] == "remote snapshot"
    # nothing was unpacked into the snapshotter's own directories: the layers live in the hook's
    own = stack.snapshotter.root / "snapshots"
    assert not any((d / "fs/bin/busybox").exists() for d in own.iterdir())

    out = ctd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "stargz",
        image,
        "r-run",
        "sh",
        "-c",
        "cat /etc/motd /etc/layer2",
    ).stdout
    assert out == MOTD + LAYER2_TEXT

    stack.restart_snapshotter()
    restored = [c for c in calls(layers) if c["call"] == "restore"]
    assert len(restored) == 2
    out = ctd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "r-again", "cat", "/etc/motd"
    )
    assert out == MOTD

    ctd.ctr("images", "rm", "--sync", image)
    ctd.ctr("content", "prune", "references", check=False)
    released = [c for c in calls(layers) if c["call"] == "release"]
    assert sorted(c["dir"] for c in released) == sorted(c["dir"] for c in restored)
