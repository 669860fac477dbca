"""Directory fds along one path below a root, moved from path to path at a cost linear in
what changes: extracting a deep tree opens each directory once, not once per entry below it.

Every directory is opened relative to its parent's fd with O_NOFOLLOW | O_DIRECTORY, so a
symlink (or anything that is not a directory) on the way is refused with UnsafePathError and
nothing outside the root is ever reached, whatever another process does meanwhile.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from stargz.errors import UnsafePathError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Levels that keep their fd: the last KEEP, and every KEEP-th one (to reopen the others
# from). At the deepest path the limits allow that is a few dozen fds, far below any
# RLIMIT_NOFILE, and a closed level costs at most KEEP opens to reach again.
KEEP = 16


def open_dir_at(parent_fd: int, part: str, path: str) -> int:
    """The directory ``part`` in ``parent_fd``; UnsafePathError when it is not one."""
    try:
        return os.open(part, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                f"refusing to write {path!r} through {part!r}, which is not a directory"
            ) from None
        raise


class DirWalker:
    """The fd of one directory below ``root_fd``, moved with ``open_dir(parts)``.

    Moving to a path that shares a prefix with the current one opens only what differs, so
    in tar order (parents first, depth first) each directory is opened once."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._names: list[str] = []
        self._fds: list[int | None] = []

    def open_dir(self, parts: Sequence[str], path: str = "") -> int:
        """The fd of directory ``root/parts[0]/...`` (the walker's: do not close it; it is
        valid until the next call). ``path`` names the entry in errors."""
        names = self._names
        common = 0
        limit = min(len(names), len(parts))
        while common < limit and names[common] == parts[common]:
            common += 1
        self._truncate(common)
        for part in parts[common:]:
            self._push(part, path)
        return self._top()

    def close(self) -> None:
        self._truncate(0)

    def _top(self) -> int:
        if not self._fds:
            return self._root
        fd = self._fds[-1]
        return fd if fd is not None else self._reopen(len(self._fds) - 1)

    def _push(self, part: str, path: str) -> None:
        fd = open_dir_at(self._top(), part, path or "/".join([*self._names, part]))
        self._names.append(part)
        self._fds.append(fd)
        leaving = len(self._fds) - 1 - KEEP  # the level that just left the last KEEP
        if leaving > 0 and leaving % KEEP:
            old = self._fds[leaving]
            if old is not None:
                os.close(old)
                self._fds[leaving] = None

    def _reopen(self, level: int) -> int:
        """Reopen the closed levels up to ``level`` from the kept level above them."""
        kept = level - level % KEEP  # its fd is open: kept levels close only when left
        for at in range(kept + 1, level + 1):
            if self._fds[at] is None:
                parent = self._fds[at - 1]
                assert parent is not None
                self._fds[at] = open_dir_at(parent, self._names[at], "/".join(self._names))
        fd = self._fds[level]
        assert fd is not None
        return fd

    def _truncate(self, depth: int) -> None:
        for fd in self._fds[depth:]:
            if fd is not None:
                os.close(fd)
        del self._fds[depth:]
        del self._names[depth:]
