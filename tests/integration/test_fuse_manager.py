"""The FUSE manager for real: `stargz fuse-manager` serves the lazy layers, the snapshotter
(``[fuse_manager] enable``) asks it over its socket; containerd + runc run a long-lived container
on them. The snapshotter is killed (SIGKILL): the container still reads a file it never read;
the restarted snapshotter reattaches (same directories) and new containers run; stopping both
unmounts cleanly."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.fs.mount import is_mounted
from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    BIG_FILE,
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    _noise,
    estargz_image_fixture,
    image_fixture,
    registry_fixture,
    running_stack,
)
from tests.support.containerd import REPO, stop_process, wait_for_socket

pytestmark = pytest.mark.integration


@pytest.fixture(name="manager")
def manager_fixture(tmp_path: Path,
                    registry: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    config = tmp_path / "config.toml"
    address = tmp_path / "fm.sock"
    config.write_text(f'[lazy]\nplain_http = ["{registry}"]\nno_background_fetch = true\n'
                      f'[fuse_manager]\nenable = true\naddress = "{address}"\n')
    proc = _start_manager(tmp_path, config)
    try:
        yield proc, config
    finally:
        stop_process(proc)


def _start_manager(work: Path, config: Path) -> subprocess.Popen[bytes]:
    address = work / "fm.sock"
    args = [sys.executable, "-m", "stargz.cli.main", "--log-level", "debug", "fuse-manager",
            "--config", str(config), "--root", str(work / "fm-root"), "--address", str(address)]
    with (work / "manager.log").open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_for_socket(address, proc, "fuse manager")
    return proc


def _exec(stack: Stack, exec_id: str, *command: str) -> str:
    return stack.containerd.ctr("task", "exec", "--exec-id", exec_id, "t-long", *command).stdout


def test_a_container_reads_on_across_a_killed_snapshotter(
        tmp_path: Path, manager: tuple[subprocess.Popen[bytes], Path],
        estargz_image: str) -> None:
    proc, config = manager
    address = tmp_path / "fm.sock"
    assert stat.S_IMODE(address.stat().st_mode) == 0o600
    mountpoint = tmp_path / "fm-root" / "fuse"
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        stack.rpull(estargz_image)
        stack.containerd.ctr("run", "-d", "--snapshotter", "stargz", estargz_image, "t-long",
                             "sleep", "3600")
        try:
            assert _exec(stack, "e1", *WORKLOAD) == MOTD + LAYER2_TEXT
            snap = stack.snapshotter
            assert snap.proc is not None
            snap.proc.kill()  # kill -9 of the snapshotter
            snap.proc.wait()
            # the container reads a file nothing read before, with no snapshotter running
            out = _exec(stack, "e2", "sha256sum", "/" + BIG_FILE)
            assert out.split()[0] == hashlib.sha256(_noise(BIG_SIZE)).hexdigest()

            snap.start()  # reattaches: the manager still serves the same directories
            out = stack.containerd.ctr_retry(
                "run", "--rm", "--snapshotter", "stargz", estargz_image, "t-new", *WORKLOAD)
            assert out == MOTD + LAYER2_TEXT
            log = snap.log_text()
            assert log.count(f"at {mountpoint}/sha256-") >= 2  # restored at the manager's dirs
            assert "can not be restored" not in log
            assert _exec(stack, "e3", "cat", "/etc/layer2") == LAYER2_TEXT
        finally:
            stack.containerd.ctr("task", "kill", "-s", "SIGKILL", "t-long", check=False)
            stack.containerd.ctr("task", "rm", "-f", "t-long", check=False)
            stack.containerd.ctr("container", "rm", "t-long", check=False)
        assert stack.snapshotter.stop() == 0
        assert is_mounted(mountpoint)  # stopping the snapshotter leaves the layers served
    assert stop_process(proc) == 0  # SIGTERM: unmounts and exits
    assert not is_mounted(mountpoint)
    assert "FUSE manager stopping" in (tmp_path / "manager.log").read_text()


def test_a_killed_manager_mounts_its_layers_again_when_restarted(
        tmp_path: Path, manager: tuple[subprocess.Popen[bytes], Path],
        estargz_image: str) -> None:
    proc, config = manager
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        stack.rpull(estargz_image)
        assert stack.run(estargz_image, "t-1", *WORKLOAD) == MOTD + LAYER2_TEXT
        proc.kill()  # kill -9 of the manager: its mount is dead until it comes back
        proc.wait()
        again = _start_manager(tmp_path, config)
        try:
            # the snapshotter was not restarted: the same directories serve again
            assert stack.run(estargz_image, "t-2", *WORKLOAD) == MOTD + LAYER2_TEXT
            log = (tmp_path / "manager.log").read_text()
            assert log.count("restored snapshot") == 2, log[-3000:]
            assert "removing the stale FUSE mount" in log
        finally:
            assert stop_process(again) == 0
