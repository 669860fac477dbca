"""The snapshotter's socket is root's alone, whatever the umask (issue 16, point 8): whoever can
connect to it makes the daemon mount things as root. Started at umask 000 with its socket in a
directory that does not exist yet, the daemon makes the directory 0700 and the socket 0600, and
containerd still pulls and runs an image through it."""

from __future__ import annotations

import os
import shutil
import stat
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


@pytest.fixture(name="stack")
def stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack of tests/support/containerd.py, its snapshotter started at umask 000."""
    work = tmp_path_factory.mktemp("stack")
    snap = SnapshotterProcess(work / "run/stargz/stargz.sock", work / "snap-root",
                              work / "snap.log")
    old = os.umask(0)
    try:
        snap.start()
    finally:
        os.umask(old)
    ctd = Containerd(work / "containerd", snap.address)
    ctd.start()
    try:
        yield Stack(snap, ctd)
    finally:
        ctd.stop()
        snap.stop()
        shutil.rmtree(work, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_socket_is_0600_in_a_0700_directory_and_containerd_uses_it(stack: Stack,
                                                                   image: str) -> None:
    sock = stack.snapshotter.address
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert (mode(sock), mode(sock.parent), mode(sock.parent.parent)) == (0o600, 0o700, 0o700)
    assert sorted(os.listdir(sock.parent)) == ["stargz.sock"]  # no bind directory left behind
    ctr = stack.containerd
    ctr.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    out = ctr.ctr("run", "--rm", "--snapshotter", "stargz", image, "t-socket", "cat",
                  "/etc/motd", "/etc/layer2").stdout
    assert out == MOTD + LAYER2_TEXT
    assert stack.snapshotter.stop() == 0, stack.snapshotter.log_text()
    assert not sock.exists()
