"""Mount lifecycle: serve every layer from one FUSE mount, wait for it, unmount, clean stale mounts.

pyfuse3 keeps one session per process, so :class:`LazyFS` is one mount per process, and layers
are added to it while it runs: ``<mountpoint>/<layer digest>/`` is each layer's root, ready to be
an overlayfs lowerdir. Serve it on the current event loop for the span of a block
(``async with fs.running(): ...``, the daemons' way), as a task of an anyio task group
(``await group.start(fs.serve)``), or on a thread of its own (:class:`FuseThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import anyio
import anyio.abc
import anyio.from_thread
import pyfuse3
import pyfuse3.asyncio

from stargz.errors import RuntimeIntegrationError
from stargz.fs.fuse import StargzOperations
from stargz.fs.metrics import FSMetrics
from stargz.fs.tree import FSCore
from stargz.fs.view import LayerView

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # the kernel caps a FUSE read at 256 pages; -o max_read breaks libfuse 3.14
MOUNT_TIMEOUT_S = 10.0  # a mount not usable by then is an error
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
                 allow_setuid_and_devices: bool = False,
                 metrics: FSMetrics | None = None) -> None:
        """``metrics``: a process's metrics already served (the snapshotter serves them from
        its start, before any mount); else the mount's own, served on ``metrics_address``."""
        self.mountpoint = Path(mountpoint)
        self.options: tuple[str, ...] = MOUNT_OPTIONS + (
            UNSAFE_OPTIONS if allow_setuid_and_devices else SAFE_OPTIONS)
        self.core = FSCore(uid=os.getuid(), gid=os.getgid())
        self.metrics = metrics if metrics is not None else FSMetrics(self.layer_directories)
        self.operations = StargzOperations(self.core, self.metrics)
        self._metrics_address = metrics_address
        self._loop: asyncio.AbstractEventLoop | None = None

    def layer_directories(self) -> list[tuple[str, LayerView]]:
        return [(str(self.mountpoint / name), view) for name, view in self.core.named_layers()]

    def add_layer(self, view: LayerView, name: str | None = None) -> Path:
        """Serve ``view``; returns its directory (usable at once if the mount is up)."""
        return self.mountpoint / self.core.add_layer(view, name)

    def remove_layer(self, name: str) -> None:
        self.core.remove_layer(name)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Mount, then answer the kernel until :meth:`stop`; unmounts on the way out.
        ``await group.start(fs.serve)`` returns once the mount is usable, or raises why not."""
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
            task_status.started()
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

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = MOUNT_TIMEOUT_S) -> AsyncIterator[anyio.Event]:
        """Serve for the span of the block: usable on entry (RuntimeIntegrationError if not
        within ``timeout``), stopped and unmounted on exit. Yields an event that is set if
        the mount ends by itself (the block decides what to do then). The block's own
        exception passes through as it is."""
        ended = anyio.Event()
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            with anyio.fail_after(timeout):
                await group.start(self._serve_until_ended, ended)
        except BaseException as err:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
            if isinstance(err, TimeoutError):
                raise RuntimeIntegrationError(
                    f"FUSE mount on {self.mountpoint} did not come up in {timeout} s") from None
            raise
        try:
            yield ended
        finally:
            self.stop()
            await group.__aexit__(None, None, None)  # waits for the unmount

    async def _serve_until_ended(
        self, ended: anyio.Event, *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _Usable(task_status)
        try:
            await self.serve(task_status=status)
        except Exception as err:  # after the start, a failure ends the mount: logged, not raised
            if not status.usable:
                raise
            log.error("FUSE server on %s failed: %s", self.mountpoint, err)
        finally:
            ended.set()


class _Usable(anyio.abc.TaskStatus[None]):
    """Passes the start on, remembering whether it happened."""

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self.inner = inner
        self.usable = False

    def started(self, value: None = None) -> None:
        self.usable = True
        self.inner.started(value)


class FuseThread:
    """Serves a :class:`LazyFS` from an event loop on a thread of its own (an anyio portal)."""

    def __init__(self, fs: LazyFS) -> None:
        self.fs = fs
        self._portal: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._running: AbstractContextManager[anyio.Event] | None = None

    def start(self, timeout: float = MOUNT_TIMEOUT_S) -> None:
        """Returns once the mount is usable; raises why it is not."""
        portal_cm = anyio.from_thread.start_blocking_portal(name="stargz-fuse")
        portal = portal_cm.__enter__()
        running = portal.wrap_async_context_manager(self.fs.running(timeout))
        try:
            running.__enter__()
        except BaseException as err:
            portal_cm.__exit__(None, None, None)
            log.error("FUSE server on %s failed: %s", self.fs.mountpoint, err)
            raise
        self._portal, self._running = portal_cm, running

    def stop(self) -> None:
        """Unmount and stop the thread."""
        running, portal, self._running, self._portal = self._running, self._portal, None, None
        if running is not None:
            running.__exit__(None, None, None)
        if portal is not None:
            portal.__exit__(None, None, None)


@contextlib.contextmanager
def on_stop_signals(stop: anyio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while the block runs (on asyncio, which pyfuse3 needs)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def first_set(*events: anyio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with anyio.create_task_group() as group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            group.cancel_scope.cancel()

        for event in events:
            group.start_soon(wait, event)


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
    """A mount whose FUSE daemon is gone: statfs(2) fails with ENOTCONN (stat(2) alone may be
    answered from the attributes the kernel cached before the daemon died)."""
    try:
        os.stat(path)
        os.statvfs(path)
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
