"""Real daemons for snapshotter tests: our snapshotter (a subprocess) and containerd 1.6 using it.

Both run in a test's temporary directory and are stopped by their own PID. Start the snapshotter
BEFORE containerd: containerd's gRPC backoff to a proxy socket that appears late can refuse
calls for ~10 s (RECIPES.md).

    snap = SnapshotterProcess(tmp / "snap.sock", tmp / "snap-root", tmp / "snap.log"); snap.start()
    ctd = Containerd(tmp / "containerd", snap.address); ctd.start()
    ctd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", ref)
    ctd.stop(); snap.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROXY_NAME = "stargz"  # the proxy plugin name: ctr ... --snapshotter stargz
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
[proxy_plugins]
  [proxy_plugins.{name}]
    type = "snapshot"
    address = "{snapshotter}"
"""


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until something accepts connections on the unix socket, or the process died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {path} within {START_TIMEOUT_S} s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM this process (by its PID), SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(STOP_TIMEOUT_S)


class SnapshotterProcess:
    """``python -m <module> --address A --root R`` (the daemon, or a test launcher like it)."""

    def __init__(
        self,
        address: Path,
        root: Path,
        log: Path,
        module: str = "stargz.snapshotter.daemon",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.address, self.root, self.log = address, root, log
        self.module, self.extra_args = module, list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", self.module, "--address", str(self.address)]
        args += ["--root", str(self.root), "--log-level", "debug", *self.extra_args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for_socket(self.address, self.proc, "snapshotter")

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Containerd:
    """containerd with our snapshotter registered as proxy plugin ``stargz``."""

    def __init__(self, workdir: Path, snapshotter_address: Path) -> None:
        self.workdir = workdir
        self.address = workdir / "containerd.sock"
        self.snapshotter_address = snapshotter_address
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "containerd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=self.workdir / "root",
                state=self.workdir / "state",
                address=self.address,
                name=PROXY_NAME,
                snapshotter=self.snapshotter_address,
            )
        )
        return config

    def start(self) -> None:
        config = self.write_config()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_socket(self.address, self.proc, "containerd")

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        return code

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERD_ADDRESS": str(self.address),
            "CONTAINERD_NAMESPACE": "default",
        }

    def ctr(
        self, *args: str, tool: str = "ctr", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` (or ``ctr-remote``) against this containerd; raise with its output."""
        result = subprocess.run(
            [tool, *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            command = " ".join([tool, *args])
            raise RuntimeError(
                f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def ctr_retry(self, *args: str, tool: str = "ctr", attempts_s: float = 30) -> str:
        """Retry while containerd reconnects to a restarted snapshotter (its gRPC backoff)."""
        deadline = time.monotonic() + attempts_s
        while True:
            result = self.ctr(*args, tool=tool, check=False)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tool} {' '.join(args)} kept failing:\n{result.stderr}")
            time.sleep(0.5)
