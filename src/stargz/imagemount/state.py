"""Where a mounted image keeps its state, and how its mounts are taken down.

Each mountpoint gets a state directory ``<state root>/<hash of the mountpoint>/`` holding the
daemon's pid, its log, the FUSE mount of the layers (``fuse/``), the overlay's upper and work
dirs (``--rw``) and the blobs of layers downloaded in full. The hash is of the absolute path, not
of its realpath, so that a dead mount on it (stat fails with ENOTCONN) never stands in the way.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import RuntimeIntegrationError
from stargz.fs.mount import cleanup_stale, is_mounted, unmount
from stargz.imagemount import DEFAULT_STATE_ROOT

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MountState:
    mountpoint: Path
    directory: Path

    @classmethod
    def of(cls, mountpoint: str | Path, state_root: Path = DEFAULT_STATE_ROOT) -> MountState:
        target = Path(os.path.normpath(os.path.abspath(mountpoint)))
        key = hashlib.sha256(str(target).encode()).hexdigest()[:16]
        return cls(target, state_root / key)

    @property
    def fuse_dir(self) -> Path:
        return self.directory / "fuse"

    @property
    def upper_dir(self) -> Path:
        return self.directory / "upper"

    @property
    def work_dir(self) -> Path:
        return self.directory / "work"

    @property
    def blobs_dir(self) -> Path:
        return self.directory / "blobs"

    @property
    def log_file(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    def create(self) -> None:
        for path in (self.fuse_dir, self.blobs_dir):
            path.mkdir(parents=True, exist_ok=True)
        (self.directory / "mountpoint").write_text(f"{self.mountpoint}\n")
        self.pid_file.write_text(f"{os.getpid()}\n")

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving this mountpoint, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or not _alive(pid):
            return None
        return pid

    def exists(self) -> bool:
        return self.directory.is_dir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, not yet reaped) is not serving anything
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mount_overlay(state: MountState, lowerdirs: list[Path], writable: bool) -> None:
    """Overlayfs of ``lowerdirs`` (topmost first) on the mountpoint; a read-only image of one
    layer is a read-only bind mount (overlayfs wants two lowerdirs without an upper)."""
    for path in lowerdirs:
        if ":" in str(path) or "," in str(path):
            raise RuntimeIntegrationError(f"layer directory {path} can not be an overlay lowerdir")
    if not writable and len(lowerdirs) == 1:
        _run(["mount", "--bind", str(lowerdirs[0]), str(state.mountpoint)])
        _run(["mount", "-o", "remount,bind,ro", str(state.mountpoint)])
        return
    options = "lowerdir=" + ":".join(str(p) for p in lowerdirs)
    if writable:
        state.upper_dir.mkdir(exist_ok=True)
        state.work_dir.mkdir(exist_ok=True)
        options += f",upperdir={state.upper_dir},workdir={state.work_dir}"
    else:
        options += ",ro"
    _run(["mount", "-t", "overlay", "stargz", "-o", options, str(state.mountpoint)])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeIntegrationError(f"{' '.join(argv[:3])}: {done.stderr.strip()}")


def unmount_overlay(state: MountState) -> None:
    """Take the image off its mountpoint; lazily when it is busy (it goes once unused)."""
    if not is_mounted(state.mountpoint):
        return
    done = subprocess.run(["umount", str(state.mountpoint)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        log.warning("umount %s: %s; detaching lazily", state.mountpoint, done.stderr.strip())
        _run(["umount", "-l", str(state.mountpoint)])


def cleanup(state: MountState) -> bool:
    """Remove what a dead daemon left: the overlay, the dead FUSE mount, the state directory.
    True when there was anything to remove."""
    found = state.exists() or _mounted_from(state)
    if _mounted_from(state):
        unmount_overlay(state)
    if is_mounted(state.fuse_dir) and not cleanup_stale(state.fuse_dir):
        unmount(state.fuse_dir)  # a live FUSE mount nobody serves any more
    if state.exists():
        shutil.rmtree(state.directory)
    return found


def _mounted_from(state: MountState) -> bool:
    """Whether the mountpoint holds a mount of ours (its options name our state directory)."""
    target = str(state.mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            if fields[4] != target:
                continue
            if str(state.directory) in line or fields[3].startswith(str(state.fuse_dir)):
                return True
            if "stargz" in line.split(" - ", 1)[-1]:
                return True
    return False


def stop_daemon(state: MountState, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Ask a running daemon to unmount and exit; True if one was running."""
    pid = state.daemon_pid()
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            log.warning("daemon %d did not stop in %.0f s; killing it", pid, timeout)
            _kill(pid)
            break
        time.sleep(0.05)
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as err:
        if err.errno != errno.ESRCH:
            raise
