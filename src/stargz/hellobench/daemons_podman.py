"""podman with its own storage and config under a directory (RECIPES.md: runc, cgroupfs, file
events, raised ulimits), optionally with an additional layer store: ours (``stargz store``, a
subprocess) or the Go reference's (``stargzstore`` from ../shared/peers), each stopped by its own
PID.

    store = StoreProcess(work / "store", work / "store-root", work / "store.log"); store.start()
    podman = Podman(work / "podman", layer_store=store.mountpoint)
    ...
    podman.reset(); store.stop()
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

from stargz.errors import RuntimeIntegrationError
from stargz.hellobench.daemons import (
    DEFAULT_PEERS,
    SOURCE_ROOT,
    Daemon,
    ReadinessListener,
    command_failed,
    python_env,
)

START_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1
GO_STORE = DEFAULT_PEERS / "stargzstore"

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "{runroot}"
graphroot = "{graphroot}"
{options}"""


class Podman:
    """podman (and buildah, which reads the same configuration) with ``extra_env`` added to
    their environment (XDG_RUNTIME_DIR, REGISTRY_AUTH_FILE...)."""

    def __init__(self, workdir: Path, layer_store: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        self.containers_conf = workdir / "containers.conf"
        # a libpod tmp dir of its own (default /run/libpod, shared by every podman on the machine:
        # its exit files and locks made runs wait 20 s for another podman's containers)
        self.containers_conf.write_text(CONTAINERS_CONF.format(events=workdir / "events.log",
                                                               tmp=workdir / "libpod-tmp"))
        options = ""
        if layer_store is not None:
            options = f'[storage.options]\nadditionallayerstores = ["{layer_store}:ref"]\n'
        self.storage_conf = workdir / "storage.conf"
        self.storage_conf.write_text(STORAGE_CONF.format(
            runroot=workdir / "run", graphroot=workdir / "graph", options=options))

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf), **self.extra_env}

    def podman(self, *args: str, timeout: float = 300,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._tool("podman", args, timeout, stdin)

    def buildah(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._tool("buildah", args, timeout, None)

    def _tool(self, tool: str, args: tuple[str, ...], timeout: float,
              stdin: str | None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([tool, *args], env=self.env(), capture_output=True, text=True,
                                timeout=timeout, input=stdin)
        if result.returncode != 0:
            raise command_failed([tool, *args], result.returncode, result.stdout + result.stderr)
        return result

    def run(self, *args: str) -> str:
        return self.podman("run", *args).stdout

    def reset(self) -> None:
        subprocess.run(["podman", "system", "reset", "--force"], env=self.env(),
                       capture_output=True, timeout=120, check=False)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (a killed run leaves no store serving a
    mount under a directory about to be removed)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _mounted(path: Path) -> bool:
    target = str(path.absolute())
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
        return any(line.split()[4] == target for line in info)


def detach(path: Path) -> None:
    """Unmount what a killed store left on ``path`` (lazily: it may be busy)."""
    if _mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


class MountedDaemon(Daemon):
    """A daemon serving a FUSE mount on ``mountpoint``: stopping it detaches what it left."""

    mountpoint: Path

    def stop(self) -> int | None:
        code = super().stop()
        detach(self.mountpoint)
        return code


class StoreProcess(MountedDaemon):
    """``stargz store MOUNTPOINT --root ROOT`` in the foreground, logging at ``log_level``.
    ``pythonpath``: where the child imports from (subclasses add a checkout)."""

    pythonpath: tuple[str, ...] = (str(SOURCE_ROOT),)

    def __init__(self, mountpoint: Path, root: Path, log: Path, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_level: str = "debug") -> None:
        self.mountpoint, self.root, self.log = mountpoint, root, log
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stargz.cli.main", "store", str(self.mountpoint),
                "--root", str(self.root), "--log-level", self.log_level, *self.extra_args]

    def start(self) -> None:
        """Returns at the store's READY=1 (mounted, HTTP stack loaded), as systemd's
        Type=notify would before starting what is ordered after it."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        listener = ReadinessListener()
        try:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT,
                    env={**python_env(self.pythonpath), **self.env, **listener.env()},
                    preexec_fn=_die_with_parent)
            self._wait_ready(listener, "stargz store")
        except RuntimeIntegrationError as err:  # the stop is done: say why, from its log
            said = " ".join(self.log_text()[offset:].split())[-800:]
            raise RuntimeIntegrationError(f"{err}: {said}") from None
        finally:
            listener.close()



class GoStoreProcess(MountedDaemon):
    """The Go reference store: ``stargzstore -root ROOT MOUNTPOINT`` (plain HTTP to loopback)."""

    def __init__(self, mountpoint: Path, root: Path, log: Path, binary: Path = GO_STORE) -> None:
        self.mountpoint, self.root, self.log = mountpoint, root, log
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "-root", str(self.root), str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                said = " ".join(self.log_text().split())[-800:]
                raise RuntimeIntegrationError(f"stargzstore did not mount: {said}")
            time.sleep(0.05)

