"""A newcomer's first hour (issue 10): each mistake gets one clear line and the right exit
status, tried against the real registry, FUSE, containerd and the snapshotter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    Mounts,
    images_fixture,
    mounted,
    mounts_fixture,
    registry_fixture,
)
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

STARGZ = str(Path(sys.executable).with_name("stargz"))
DIGEST = "sha256:" + "0" * 64


def stargz(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STARGZ, *args], capture_output=True, text=True, timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert done.returncode == status, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stargz: error: "), done.stderr
    return lines[0]


def test_a_digest_without_its_algorithm(registry: RunningRegistry) -> None:
    line = one_error_line(stargz("get-toc-digest", "--plain-http", f"{registry.host}/a/b:c",
                                 "0" * 64))
    assert f"write sha256:{'0' * 64}" in line


def test_a_missing_blob_says_http_404_once(registry: RunningRegistry) -> None:
    line = one_error_line(stargz("get-toc-digest", "--plain-http", f"{registry.host}/a/b:c",
                                 DIGEST))
    assert line.count("404") == 1, line


def test_plain_http_registry_without_the_flag_gets_a_hint(registry: RunningRegistry) -> None:
    port = registry.host.rsplit(":", 1)[1]
    line = one_error_line(stargz("get-toc-digest", f"localhost:{port}/a/b:c", DIGEST))
    assert "WRONG_VERSION_NUMBER" in line and "use --plain-http" in line
    assert "gave up" not in line  # not retried: the answer would be the same


def test_umount_of_a_busy_mount_refuses_and_lazy_detaches(
    registry: RunningRegistry, images: dict[str, str], mounts: Mounts, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mounts.mount(f"{registry.host}/{images['estargz']}", mnt)
    with subprocess.Popen(["sleep", "300"], cwd=mnt) as inside:  # a shell sitting in it
        try:
            line = one_error_line(mounts.umount(mnt, check=False))
            assert "busy" in line and "--lazy" in line
            assert mounted(mnt)  # untouched, and still served
            assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT
            done = stargz("umount", "--state-dir", str(mounts.state_root), "--lazy", str(mnt))
            assert done.returncode == 0, done.stderr
            assert not mounted(mnt)
        finally:
            inside.kill()
    assert not mounts.state(mnt).exists()


@pytest.mark.parametrize("case", ["long address", "address under a file", "root is a file",
                                  "root under /proc"])
def test_snapshotter_start_up_errors_have_one_shape(case: str, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    address, root = tmp_path / "s.sock", tmp_path / "root"
    if case == "long address":
        address = tmp_path / ("x" * 110) / "s.sock"
    elif case == "address under a file":
        address = a_file / "s.sock"
    elif case == "root is a file":
        root = a_file
    else:
        root = Path("/proc/stargz-nope")
    done = stargz("snapshotter", "--address", str(address), "--root", str(root), timeout=60)
    assert done.returncode in (1, 2)
    line = one_error_line(done, done.returncode)  # gRPC's own E... add_port.cc line too
    assert str(address if "address" in case else root) in line


@pytest.fixture(name="no_snapshotter")
def no_snapshotter_fixture(tmp_path: Path) -> Iterator[tuple[object, Path]]:
    from tests.support.containerd import Containerd

    absent = Path(tempfile.mkdtemp(dir=tmp_path)) / "stargz.sock"  # nothing listens here
    ctd = Containerd(tmp_path / "containerd", absent)
    ctd.start()
    try:
        yield ctd, absent
    finally:
        ctd.stop()


def test_rpull_with_the_snapshotter_down_names_the_snapshotter(
    registry: RunningRegistry, images: dict[str, str], no_snapshotter: tuple[object, Path]
) -> None:
    ctd, absent = no_snapshotter
    address = str(ctd.address)  # type: ignore[attr-defined]
    done = stargz("rpull", "--plain-http", "--address", address,
                  f"{registry.host}/{images['estargz']}", timeout=300)
    line = one_error_line(done)
    assert "snapshotter" in line and str(absent) in line
    assert f"containerd at {address} is not reachable" not in line
    # and with containerd itself away, containerd is named
    gone = os.path.join(os.path.dirname(address), "gone.sock")
    line = one_error_line(stargz("rpull", "--plain-http", "--address", gone,
                                 f"{registry.host}/{images['estargz']}", timeout=300))
    assert f"containerd at {gone} is not reachable" in line
