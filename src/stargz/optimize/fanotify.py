"""Which files are opened on a root filesystem, in first-access order: fanotify, by ctypes.

The mark is a filesystem mark (``FAN_MARK_FILESYSTEM``) on the mounted image's overlay: a
container sees its root through its own bind mount after pivot_root, in its own mount namespace,
which a mount mark would miss; a filesystem mark sees every mount of that overlay. Events are
``FAN_OPEN | FAN_OPEN_EXEC | FAN_ACCESS``: an exec'd binary and its ELF interpreter are opened
by the kernel (``FAN_OPEN_EXEC``), a shared library or any other file is opened before it is
read or mapped (``FAN_OPEN``), and reads show as ``FAN_ACCESS``. Directories are left out (no
``FAN_ONDIR``): the converter puts a file's parents before it anyway.

Each event carries a descriptor of the file; its path comes from ``/proc/self/fd``: relative
to the container's root for the container's opens, under the mountpoint for ours. Needs root
(CAP_SYS_ADMIN). ctypes rather than a PyPI wrapper: two calls and one 24-byte record, where
the wrappers found (pyfanotify: a C extension with its own helper process and socket
protocol; butter: unmaintained since 2021) bring far more than that.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from pathlib import Path

from stargz.errors import RuntimeIntegrationError

log = logging.getLogger(__name__)

FAN_ACCESS = 0x01
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_UNLIMITED_QUEUE = 0x10
FAN_MARK_ADD = 0x01
FAN_MARK_FILESYSTEM = 0x100
AT_FDCWD = -100
FANOTIFY_METADATA_VERSION = 3
RECORDED_EVENTS = FAN_OPEN | FAN_OPEN_EXEC | FAN_ACCESS

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_READ_SIZE = 256 << 10
_DELETED = " (deleted)"


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


def open_fanotify(root: Path) -> int:
    """A fanotify descriptor reporting opens, execs and reads of every file of ``root``'s
    filesystem (non-blocking; the event descriptors it hands out are non-blocking too, so a
    fifo's never waits for a writer)."""
    libc = _libc()
    event_flags = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NONBLOCK
    fd: int = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
                            event_flags)
    if fd < 0:
        raise RuntimeIntegrationError(f"fanotify_init: {_errno_text()} (optimize needs root)")
    done = libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, RECORDED_EVENTS, AT_FDCWD,
                              os.fsencode(root))
    if done != 0:
        message = _errno_text()
        os.close(fd)
        raise RuntimeIntegrationError(f"fanotify_mark on {root}: {message}")
    return fd


def _errno_text() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


class AccessRecorder:
    """Records, on a thread of its own, the files opened on ``root``'s filesystem.

        recorder = AccessRecorder(mountpoint); recorder.start()
        ... run the workload ...
        paths = recorder.stop()   # root-relative, cleaned, each once, first access first

    The thread closes every event's descriptor, which on a FUSE-backed overlay talks to the
    FUSE server: call ``stop`` from a thread, never from the loop that serves FUSE.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._prefix = str(self._root).rstrip("/") + "/"
        self._paths: dict[str, None] = {}
        self._events = 0
        self._overflowed = False
        self._fd = -1
        self._wake_read, self._wake_write = -1, -1
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def events(self) -> int:
        return self._events

    def start(self) -> None:
        self._fd = open_fanotify(self._root)
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="fanotify-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> list[str]:
        """Read what is still queued, stop, and return the recorded paths."""
        if self._thread is not None:
            os.write(self._wake_write, b"x")
            self._thread.join()
            self._thread = None
        for fd in (self._fd, self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_read = self._wake_write = -1
        if self._error is not None:
            raise RuntimeIntegrationError(f"fanotify recorder failed: {self._error}")
        if self._overflowed:
            log.warning("fanotify queue overflowed: the access record misses some files")
        return list(self._paths)

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._wake_read], [], [])
                self._drain()
                if self._wake_read in ready:
                    self._drain()  # events queued before the stop was asked for
                    return
        except OSError as err:
            self._error = err

    def _drain(self) -> None:
        while True:
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            self._parse(buffer)

    def _parse(self, buffer: bytes) -> None:
        offset = 0
        while offset + _METADATA.size <= len(buffer):
            length, version, _, _, mask, fd, _pid = _METADATA.unpack_from(buffer, offset)
            if version != FANOTIFY_METADATA_VERSION or length < _METADATA.size:
                raise OSError(f"fanotify metadata version {version}, length {length}")
            offset += length
            if mask & FAN_Q_OVERFLOW:
                self._overflowed = True
            if fd < 0:
                continue
            try:
                self._note(os.readlink(f"/proc/self/fd/{fd}"))
            finally:
                os.close(fd)

    def _note(self, path: str) -> None:
        self._events += 1
        path = path.removesuffix(_DELETED)
        if path.startswith(self._prefix):  # opened through our mountpoint, not the container's
            path = path[len(self._prefix):]
        name = os.path.normpath("/" + path).lstrip("/")
        if name and name not in self._paths:
            self._paths[name] = None
