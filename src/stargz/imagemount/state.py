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
        """The state directory, for root only (its log, downloaded blobs, the upper dir's
        changes), with its parents when they are missing."""
        make_private_dirs(self.directory)
        for path in (self.fuse_dir, self.blobs_dir):
            path.mkdir(mode=0o700, exist_ok=True)
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


def make_private_dirs(path: Path) -> None:
    """``path`` and its missing parents, each made 0700 whatever the umask; existing ones are
    left as they are (they are the admin's)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by a daemon starting beside us
        os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask, never widened


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


def mount_overlay(state: MountState, lowerdirs: list[Path], writable: bool,
                  allow_setuid_and_devices: bool = False) -> None:
    """Overlayfs of ``lowerdirs`` (topmost first) on the mountpoint; a read-only image of one
    layer is a read-only bind mount (overlayfs wants two lowerdirs without an upper).

    Either mount is ``nosuid,nodev`` unless ``allow_setuid_and_devices``: an overlay honours
    its own flags, not its lowerdirs', so the FUSE mount's ``nosuid`` alone would not stop a
    local user from running the image's setuid-root binaries as root."""
    for path in lowerdirs:
        if ":" in str(path) or "," in str(path):
            raise RuntimeIntegrationError(f"layer directory {path} can not be an overlay lowerdir")
    flags = "suid,dev" if allow_setuid_and_devices else "nosuid,nodev"
    if not writable and len(lowerdirs) == 1:
        _run(["mount", "--bind", str(lowerdirs[0]), str(state.mountpoint)])
        _run(["mount", "-o", f"remount,bind,ro,{flags}", str(state.mountpoint)])
        return
    options = "lowerdir=" + ":".join(str(p) for p in lowerdirs)
    if writable:
        _make_upper(state, lowerdirs[0])
        options += f",upperdir={state.upper_dir},workdir={state.work_dir}"
    else:
        options += ",ro"
    _run(["mount", "-t", "overlay", "stargz", "-o", f"{options},{flags}", str(state.mountpoint)])


def _make_upper(state: MountState, top_layer: Path) -> None:
    """The upper and work dirs; the upper's root takes the image root's owner and mode (the
    merged root shows the upper's: a umask-made 0777 upper would make the root world-writable)."""
    root = top_layer.stat()
    state.upper_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(state.upper_dir, root.st_uid, root.st_gid)
    os.chmod(state.upper_dir, root.st_mode & 0o7777)
    state.work_dir.mkdir(mode=0o700, exist_ok=True)


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
