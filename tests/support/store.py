"""Additional layer stores for podman tests and benchmarks: ours (``stargz store``, a subprocess)
and the Go reference's (``stargzstore`` from ../shared/peers), each stopped by its own PID.

    store = StoreProcess(tmp / "store", tmp / "store-root", tmp / "store.log"); store.start()
    podman = Podman(tmp / "podman", layer_store=store.mountpoint)
    ...
    store.stop()
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.containerd import REPO, stop_process

START_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1
GO_STORE = Path(os.environ.get("STARGZ_PEERS", "/tmp/peers")) / "stargzstore"


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (a killed test run leaves no store
    serving a mount under a directory pytest will remove)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _mounted(path: Path) -> bool:
    target = str(path.absolute())
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
        return any(line.split()[4] == target for line in info)


def detach(path: Path) -> None:
    """Unmount what a killed store left on ``path`` (lazily: it may be busy)."""
    if _mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


class StoreProcess:
    """``stargz store MOUNTPOINT --root ROOT`` in the foreground, logging at debug."""

    def __init__(self, mountpoint: Path, root: Path, log: Path, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.mountpoint, self.root, self.log = mountpoint, root, log
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stargz.cli.main", "store", str(self.mountpoint),
                "--root", str(self.root), "--log-level", "debug", *self.extra_args]

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "store serving on" not in self.log_text()[offset:]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stargz store exited {self.proc.returncode}: "
                                   f"{self.log_text()[offset:][-3000:]}")
            if time.monotonic() > deadline:
                self.stop()  # the caller never gets to: no store may outlive its test
                raise RuntimeError(f"stargz store not serving after {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        detach(self.mountpoint)
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class GoStoreProcess:
    """The Go reference store: ``stargzstore -root ROOT MOUNTPOINT`` (plain HTTP to loopback)."""

    def __init__(self, mountpoint: Path, root: Path, log: Path) -> None:
        self.mountpoint, self.root, self.log = mountpoint, root, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(GO_STORE), "-root", str(self.root), str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stargzstore did not mount: {self.log_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        detach(self.mountpoint)
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
