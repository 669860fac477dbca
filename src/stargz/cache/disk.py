"""A content-addressed directory of verified chunks: ``<dir>/sha256/ab/<hex>``.

Writes go to a temp file in the same directory, are fsynced and renamed into place, so a crash
leaves at worst a temp file, which is never served and is swept when the cache opens. Reads
re-hash the chunk by default: sha256 runs at well over 1 GB/s here, a small cost next to
decompressing the chunk again, and it keeps a flipped bit on disk (or another process writing
into the directory) from ever reaching a reader. Entries past the size limit are evicted by
access time, which is stamped on every hit so the order survives restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from stargz.errors import CacheError
from stargz.killpoints import kill_point

TEMP_PREFIX = ".tmp-"


class DiskCache:
    """Verified chunks on disk, shared across layers, images and restarts."""

    def __init__(self, root: str | Path, limit_bytes: int, verify_on_read: bool = True) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        self.verify_on_read = verify_on_read
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # hex -> size, oldest first
        self._bytes = 0
        try:
            # 0700: planted or read chunks are nobody else's business (mode applies to leaves).
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.root / "sha256").mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create cache directory {self.root}: {err.strerror}") from None
        try:
            self._scan()
        except OSError as err:
            raise CacheError(f"cannot scan cache directory {self.root}: {err.strerror}") from None
        self._evict()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def path_of(self, digest: str) -> Path:
        hex_digest = _hex(digest)
        return self.root / "sha256" / hex_digest[:2] / hex_digest

    def peek(self, digest: str) -> bytes | None:
        return None  # every hit is a file read

    def get(self, digest: str) -> bytes | None:
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CacheError(f"cannot read cached chunk {path}: {err.strerror}") from None
        if self.verify_on_read and hashlib.sha256(data).hexdigest() != _hex(digest):
            self._drop(_hex(digest))  # corrupt: forget it, the caller fetches again
            return None
        self._touch(path, _hex(digest), len(data))
        return data

    def put(self, digest: str, data: bytes) -> None:
        hex_digest = _hex(digest)
        if len(data) > self.limit_bytes:
            return
        with self._lock:
            if hex_digest in self._entries:
                return
        path = self.path_of(digest)
        try:
            _write_atomically(path, data)
        except OSError as err:
            raise CacheError(f"cannot write cached chunk {path}: {err.strerror}") from None
        with self._lock:
            if hex_digest not in self._entries:
                self._entries[hex_digest] = len(data)
                self._bytes += len(data)
        self._evict()

    def _touch(self, path: Path, hex_digest: str, size: int) -> None:
        now = time.time_ns()
        with contextlib.suppress(OSError):  # evicted meanwhile; the read bytes are still good
            os.utime(path, ns=(now, os.stat(path).st_mtime_ns))
        with self._lock:
            if hex_digest in self._entries:
                self._entries.move_to_end(hex_digest)
            else:  # written by another process sharing the directory
                self._entries[hex_digest] = size
                self._bytes += size

    def _drop(self, hex_digest: str) -> None:
        with self._lock:
            size = self._entries.pop(hex_digest, None)
            if size is not None:
                self._bytes -= size
        try:
            os.unlink(self.root / "sha256" / hex_digest[:2] / hex_digest)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise CacheError(f"cannot remove cached chunk {hex_digest}: {err.strerror}") from None

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.limit_bytes or not self._entries:
                    return
                oldest = next(iter(self._entries))
            self._drop(oldest)

    def _scan(self) -> None:
        """Index what earlier runs left (oldest access first) and sweep half-written files."""
        found: list[tuple[int, str, int]] = []
        for sub in (self.root / "sha256").iterdir():
            if not sub.is_dir():
                continue
            with os.scandir(sub) as entries:  # closed even when a file vanishes meanwhile
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        os.unlink(entry.path)
                    elif _is_hex(entry.name) and entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found.append((stat.st_atime_ns, entry.name, stat.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self._bytes += size


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomically(path, [data], "cache-write")


def write_atomically(path: Path, parts: Sequence[bytes], kill_at: str) -> None:
    """``parts`` as the file ``path`` (0600), whole or not at all: a temp file, fsynced,
    renamed. A crash leaves at most a ``TEMP_PREFIX`` file, which the owner's scan sweeps.
    ``kill_at`` names the crash-test kill point before the rename (stargz.killpoints)."""
    temp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        kill_point(kill_at)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    os.rename(temp, path)


def _hex(digest: str) -> str:
    algo, _, hex_digest = digest.partition(":")
    if algo != "sha256" or not _is_hex(hex_digest):
        raise CacheError(f"chunk digest {digest[:80]!r} is not a sha256 digest")
    return hex_digest


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
