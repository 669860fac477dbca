"""Mount lifecycle: serve every layer from one FUSE mount, wait for it, unmount, clean stale mounts.

pyfuse3 keeps one session per process, so :class:`LazyFS` is one mount per process, and layers
are added to it while it runs: ``<mountpoint>/<layer digest>/`` is each layer's root, ready to be
an overlayfs lowerdir. Run it on the current event loop (``await fs.serve()``, the snapshotter's
way) or in a background thread (:class:`FuseThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio

from stargz.errors import RuntimeIntegrationError
from stargz.fs.fuse import StargzOperations
from stargz.fs.metrics import FSMetrics
from stargz.fs.tree import FSCore
from stargz.fs.view import LayerView

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # the kernel caps a FUSE read at 256 pages; -o max_read breaks libfuse 3.14
MOUNT_OPTIONS = ("fsname=stargz", "subtype=stargz", "ro", "default_permissions", "allow_other")
# An image's setuid-root binaries and device nodes must not work for whoever can reach the mount
# (libfuse's default too, said explicitly). containerd's overlay over these directories is a
# mount of its own with its own flags, so setuid binaries still work inside containers.
SAFE_OPTIONS = ("nosuid", "nodev")
UNSAFE_OPTIONS = ("suid", "dev")  # only when the user asked for them (stargz mount's flag)

pyfuse3.asyncio.enable()


class LazyFS:
    """One read-only FUSE mount holding a directory per layer."""

    def __init__(self, mountpoint: str | Path, metrics_address: str | None = None,
                 allow_setuid_and_devices: bool = False) -> None:
        self.mountpoint = Path(mountpoint)
        self.options = MOUNT_OPTIONS + (
            UNSAFE_OPTIONS if allow_setuid_and_devices else SAFE_OPTIONS)
        self.core = FSCore(uid=os.getuid(), gid=os.getgid())
        self.metrics = FSMetrics(self._layer_directories)
        self.operations = StargzOperations(self.core, self.metrics)
        self._metrics_address = metrics_address
        self._loop: asyncio.AbstractEventLoop | None = None

    def _layer_directories(self) -> list[tuple[str, LayerView]]:
        return [(str(self.mountpoint / name), view) for name, view in self.core.named_layers()]

    def add_layer(self, view: LayerView, name: str | None = None) -> Path:
        """Serve ``view``; returns its directory (usable at once if the mount is up)."""
        return self.mountpoint / self.core.add_layer(view, name)

    def remove_layer(self, name: str) -> None:
        self.core.remove_layer(name)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Mount, then answer the kernel until :meth:`stop`; unmounts on the way out."""
        if is_stale(self.mountpoint):
            cleanup_stale(self.mountpoint)
        try:
            pyfuse3.init(self.operations, str(self.mountpoint), set(self.options))
        except RuntimeError as exc:
            where = self.mountpoint
            raise RuntimeIntegrationError(f"can not mount FUSE on {where}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        main = asyncio.create_task(pyfuse3.main())
        try:
            # stat(2) on the mountpoint goes through our own loop: do it from a thread
            await asyncio.to_thread(set_read_ahead, self.mountpoint, READ_AHEAD_KB)
            if self._metrics_address:
                self.metrics.serve(self._metrics_address)
            if ready is not None:
                ready.set()
            await main
        finally:
            if not main.done():
                pyfuse3.terminate()
                with contextlib.suppress(Exception):
                    await main
            self._loop = None
            pyfuse3.close(unmount=True)

    def stop(self) -> None:
        """Ask :meth:`serve` to return; callable from any thread."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(pyfuse3.terminate)


class FuseThread:
    """Runs a :class:`LazyFS` on its own event loop in a background thread."""

    def __init__(self, fs: LazyFS) -> None:
        self.fs = fs
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="stargz-fuse", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeIntegrationError(
                f"FUSE mount on {self.fs.mountpoint} did not come up: {self._error}")

    def stop(self, timeout: float = 10.0) -> None:
        self.fs.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeIntegrationError(f"FUSE server of {self.fs.mountpoint} did not stop")

    def _run(self) -> None:
        async def main() -> None:
            ready = asyncio.Event()
            server = asyncio.create_task(self.fs.serve(ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not server.done():
                self._ready.set()
            await server  # a mount error is raised here, before start() is told

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            log.error("FUSE server on %s failed: %s", self.fs.mountpoint, exc)
        finally:
            self._ready.set()


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def is_mounted(path: str | Path) -> bool:
    """Whether something is mounted on ``path`` (works for dead FUSE mounts too)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        return any(_unescape_mountinfo(line.split()[4]) == target for line in info)


def is_stale(path: str | Path) -> bool:
    """A mount whose FUSE daemon is gone: stat(2) fails with ENOTCONN."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def wait_mounted(path: str | Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (is_mounted(path) and not is_stale(path)):
        if time.monotonic() > deadline:
            raise RuntimeIntegrationError(f"nothing usable mounted on {path} after {timeout} s")
        time.sleep(0.02)


def unmount(path: str | Path, timeout: float = 10.0) -> None:
    """Unmount ``path``: ``fusermount3 -u``, or a lazy ``umount -l`` if that is refused."""
    if not is_mounted(path):
        return
    done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        log.info("fusermount3 -u %s: %s; unmounting lazily", path, done.stderr.decode().strip())
        done = subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while is_mounted(path):
        if time.monotonic() > deadline:
            raise RuntimeIntegrationError(
                f"can not unmount {path}: {done.stderr.decode().strip() or 'still mounted'}")
        time.sleep(0.02)


def cleanup_stale(path: str | Path) -> bool:
    """Remove the dead mount a killed daemon left on ``path``; True if there was one."""
    if not (is_mounted(path) and is_stale(path)):
        return False
    log.warning("removing the stale FUSE mount on %s (its daemon is gone)", path)
    unmount(path)
    return True


def set_read_ahead(path: str | Path, kb: int = READ_AHEAD_KB) -> None:
    """Raise the mount's read-ahead (its backing-device info) so big reads reach us in 1 MiB."""
    dev = os.stat(path).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        knob.write_text(f"{kb}\n")
    except OSError as exc:  # not fatal: only slower sequential reads
        log.warning("can not set read-ahead of %s (%s): %s", path, knob, exc)
