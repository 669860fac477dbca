"""The daemon as a process: serves on its socket, stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from stargz.snapshotter.api import snapshots_pb2 as pb
from stargz.snapshotter.api import snapshots_pb2_grpc
from tests.support.containerd import REPO, wait_for_socket

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_daemon_serves_and_stops_cleanly(tmp_path: Path, signal_name: str) -> None:
    sock = tmp_path / "run/stargz.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stargz.snapshotter.daemon",
            "--address",
            str(sock),
            "--root",
            str(tmp_path / "root"),
        ],
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        wait_for_socket(sock, proc, "snapshotter")

        async def probe() -> None:
            async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
                stub = snapshots_pb2_grpc.SnapshotsStub(channel)
                await stub.Prepare(pb.PrepareSnapshotRequest(key="k"))

        asyncio.run(probe())
    finally:
        proc.send_signal(getattr(signal, signal_name))
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert not sock.exists()  # the socket is removed on the way out
    assert (tmp_path / "root/snapshots/1/fs").is_dir()


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[snapshotter]\nroot = "relative/dir"\n')
    result = subprocess.run(
        [sys.executable, "-m", "stargz.snapshotter.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"stargz: error: config {config}: key 'snapshotter.root' must be an absolute path, "
        "not 'relative/dir'"
    ]


def test_second_daemon_refuses_a_live_socket_or_root(tmp_path: Path) -> None:
    sock = tmp_path / "stargz.sock"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stargz.snapshotter.daemon",
            "--address",
            str(sock),
            "--root",
            str(tmp_path / "root"),
        ],
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        wait_for_socket(sock, first, "snapshotter")
        for root, message in ((tmp_path / "root2", "is in use"), (tmp_path / "root", "is using")):
            second = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "stargz.snapshotter.daemon",
                    "--address",
                    str(sock),
                    "--root",
                    str(root),
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=60,
            )
            assert second.returncode != 0 and message in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
        wait_for_socket(sock, first, "snapshotter")  # the first one still serves
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    assert first.returncode == 0
