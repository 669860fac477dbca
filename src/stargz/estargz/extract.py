"""Extracting a verified blob to a directory, safely, at a cost linear in the blob.

Every path is opened component by component relative to a directory fd with
O_NOFOLLOW, so no name or link in the TOC can make a write land outside ``dest``:
symlinks are created as links but never followed while writing. A DirWalker keeps the fds
along the current path, so each directory is opened once in tar order, whatever the depth.

The tree (directories, special files, empty regular files) is made in TOC order, parents
first; file contents are then written in blob order, so each member (several small files
may share one) is fetched and decompressed once; hardlinks come last, then directory modes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from stargz.errors import UnsafePathError
from stargz.estargz.dirwalk import DIR_FLAGS, DirWalker, open_dir_at
from stargz.estargz.reader import VerifiedBlob
from stargz.estargz.toc import TOCEntry

log = logging.getLogger(__name__)

_DIR_FLAGS = DIR_FLAGS
# O_NONBLOCK: should the file have become a fifo meanwhile, fail (ENXIO) instead of waiting.
_WRITE_FILE = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def extract(blob: VerifiedBlob, dest: Path) -> None:
    """Write every entry of ``blob`` under ``dest`` (created if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(dest, _DIR_FLAGS)
    walker = DirWalker(root_fd)
    try:
        dirs: list[TOCEntry] = []
        links: list[TOCEntry] = []
        for entry in blob.walk():
            if entry.name == "":
                continue  # dest itself is the caller's: its mode and owner are left alone
            if entry.type == "hardlink":
                links.append(entry)  # after everything else: a TOC may name the target later
                continue
            _make(blob, walker, entry)
            if entry.type == "dir":
                dirs.append(entry)
        _write_contents(blob, walker)
        _make_links(blob, root_fd, walker, links)
        # Directory modes and times last: a read-only dir must not block its own children.
        for entry in reversed(dirs):
            _finish_dir(walker, entry, keep_time=blob.is_implied(entry))
    finally:
        walker.close()
        os.close(root_fd)


def _split(name: str) -> tuple[list[str], str]:
    """The parent's components and the base name of a cleaned TOC name."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"refusing the unclean path {name!r}")
    return parts[:-1], parts[-1]


def _parent(walker: DirWalker, name: str) -> tuple[int, str]:
    """The (walker's) fd of ``name``'s parent directory and the base name."""
    parents, base = _split(name)
    return walker.open_dir(parents, name), base


def _open_parent(root_fd: int, name: str) -> tuple[int, str]:
    """An fd of ``name``'s parent directory (inside the root; the caller closes it) and the
    base name, opened component by component from the root."""
    parents, base = _split(name)
    fd = os.dup(root_fd)
    try:
        for part in parents:
            next_fd = open_dir_at(fd, part, name)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, base


def _remove_existing(dir_fd: int, base: str, keep_dir: bool) -> None:
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        os.rmdir(base, dir_fd=dir_fd)  # only an empty dir is replaced by a non-dir
    else:
        os.unlink(base, dir_fd=dir_fd)


def _make(blob: VerifiedBlob, walker: DirWalker, entry: TOCEntry) -> None:
    """Create ``entry`` (a regular file empty for now, unless it is empty anyway)."""
    dir_fd, base = _parent(walker, entry.name)
    _remove_existing(dir_fd, base, keep_dir=entry.type == "dir")
    if entry.type == "dir":
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700, dir_fd=dir_fd)
    elif entry.type == "reg":
        fd = os.open(base, _NEW_FILE, 0o600, dir_fd=dir_fd)
        try:
            if not blob.chunks(entry.name):
                _apply_metadata(fd, entry)
        finally:
            os.close(fd)
    elif entry.type == "symlink":
        os.symlink(entry.link_name, base, dir_fd=dir_fd)
        _set_owner(dir_fd, base, entry)
        os.utime(base, (entry.modtime, entry.modtime), dir_fd=dir_fd, follow_symlinks=False)
    else:
        _make_node(dir_fd, base, entry)


def _write_contents(blob: VerifiedBlob, walker: DirWalker) -> None:
    """Every regular file's bytes, in blob order: a file's chunks lie one after another
    there (checked when the TOC was opened), and each member is decoded once."""
    current: tuple[str, int] | None = None  # the file being written and its fd
    try:
        for chunk, data in blob.verified_chunks():
            if current is None or current[0] != chunk.path:
                if current is not None:
                    _close_file(blob, current)
                    current = None
                dir_fd, base = _parent(walker, chunk.path)
                current = chunk.path, os.open(base, _WRITE_FILE, dir_fd=dir_fd)
            os.pwrite(current[1], data, chunk.chunk_offset)
        if current is not None:
            _close_file(blob, current)
            current = None
    finally:
        if current is not None:
            os.close(current[1])


def _close_file(blob: VerifiedBlob, current: tuple[str, int]) -> None:
    name, fd = current
    try:
        entry = blob.lookup(name)
        assert entry is not None
        _apply_metadata(fd, entry)
    finally:
        os.close(fd)


def _make_links(
    blob: VerifiedBlob, root_fd: int, walker: DirWalker, links: list[TOCEntry]
) -> None:
    targets = DirWalker(root_fd)  # the links' targets, walked apart from the links' dirs
    try:
        for entry in links:
            target = blob.lookup(entry.name)  # the final target, through chains of links
            assert target is not None  # the index only admits hardlinks that resolve
            target_dir, target_base = _parent(targets, target.name)
            dir_fd, base = _parent(walker, entry.name)
            _remove_existing(dir_fd, base, keep_dir=False)
            os.link(target_base, base, src_dir_fd=target_dir, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
    finally:
        targets.close()


def _apply_metadata(fd: int, entry: TOCEntry, keep_time: bool = False) -> None:
    _set_xattrs(fd, entry)
    with contextlib.suppress(PermissionError):
        os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode)  # after chown, which clears setuid/setgid
    if not keep_time:  # an implied directory has no time of its own: like tar, leave "now"
        os.utime(fd, (entry.modtime, entry.modtime))


def _set_owner(dir_fd: int, base: str, entry: TOCEntry) -> None:
    with contextlib.suppress(PermissionError):
        os.chown(base, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)


def _set_xattrs(fd: int, entry: TOCEntry) -> None:
    for name, value in entry.xattrs.items():
        try:
            os.setxattr(fd, name, value)
        except OSError as err:  # best effort: e.g. security.* or an fs without xattrs
            log.debug("xattr %s on %s not set: %s", name, entry.name, err)


def _make_node(dir_fd: int, base: str, entry: TOCEntry) -> None:
    if entry.type == "fifo":
        os.mkfifo(base, 0o600, dir_fd=dir_fd)
    else:
        kind = stat.S_IFCHR if entry.type == "char" else stat.S_IFBLK
        os.mknod(base, kind | 0o600, os.makedev(entry.dev_major, entry.dev_minor), dir_fd=dir_fd)
    # O_PATH is enough for fchown/fchmod-like calls through /proc, but never opens the device.
    fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        proc = f"/proc/self/fd/{fd}"
        with contextlib.suppress(PermissionError):
            os.chown(proc, entry.uid, entry.gid)
        os.chmod(proc, entry.mode)
        os.utime(proc, (entry.modtime, entry.modtime))
    finally:
        os.close(fd)


def _finish_dir(walker: DirWalker, entry: TOCEntry, keep_time: bool) -> None:
    parent_fd, base = _parent(walker, entry.name)
    fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        _apply_metadata(fd, entry, keep_time)
    finally:
        os.close(fd)
