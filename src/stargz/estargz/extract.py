"""Extracting a verified blob to a directory, safely.

Every path is opened component by component relative to a directory fd with
O_NOFOLLOW, so no name or link in the TOC can make a write land outside ``dest``:
symlinks are created as links but never followed while writing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from stargz.errors import UnsafePathError
from stargz.estargz.reader import VerifiedBlob
from stargz.estargz.toc import TOCEntry

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_PIECE = 4 << 20


def extract(blob: VerifiedBlob, dest: Path) -> None:
    """Write every entry of ``blob`` under ``dest`` (created if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        explicit = {id(e) for e in blob.toc.entries}  # the others are implied directories
        dirs: list[TOCEntry] = []
        links: list[TOCEntry] = []
        for entry in blob.walk():
            if entry.name == "":
                continue  # dest itself is the caller's: its mode and owner are left alone
            if entry.type == "hardlink":
                links.append(entry)  # after everything else: a TOC may name the target later
                continue
            _extract_one(blob, root_fd, entry)
            if entry.type == "dir":
                dirs.append(entry)
        for entry in links:
            target = blob.lookup(entry.name)  # the final target, through chains of links
            assert target is not None  # the index only admits hardlinks that resolve
            _extract_one(blob, root_fd, entry, link_target=target.name)
        # Directory modes and times last: a read-only dir must not block its own children.
        for entry in reversed(dirs):
            _finish_dir(root_fd, entry, keep_time=id(entry) not in explicit)
    finally:
        os.close(root_fd)


def _open_parent(root_fd: int, name: str) -> tuple[int, str]:
    """An fd of ``name``'s parent directory (inside the root) and the base name."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"refusing the unclean path {name!r}")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"refusing to write {name!r} through {part!r}, which is not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


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


def _extract_one(
    blob: VerifiedBlob, root_fd: int, entry: TOCEntry, link_target: str = ""
) -> None:
    dir_fd, base = _open_parent(root_fd, entry.name)
    try:
        _remove_existing(dir_fd, base, keep_dir=entry.type == "dir")
        if entry.type == "dir":
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=dir_fd)
        elif entry.type == "reg":
            _write_file(blob, dir_fd, base, entry)
        elif entry.type == "symlink":
            os.symlink(entry.link_name, base, dir_fd=dir_fd)
            _set_owner(dir_fd, base, entry)
            os.utime(base, (entry.modtime, entry.modtime), dir_fd=dir_fd, follow_symlinks=False)
        elif entry.type == "hardlink":
            _link(root_fd, dir_fd, base, link_target)
        else:
            _make_node(dir_fd, base, entry)
    finally:
        os.close(dir_fd)


def _write_file(blob: VerifiedBlob, dir_fd: int, base: str, entry: TOCEntry) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, flags, 0o600, dir_fd=dir_fd)
    try:
        for chunk in blob.chunks(entry.name):
            os.write(fd, blob.read_chunk(chunk))
        _apply_metadata(fd, entry)
    finally:
        os.close(fd)


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


def _link(root_fd: int, dir_fd: int, base: str, target: str) -> None:
    target_dir, target_base = _open_parent(root_fd, target)
    try:
        os.link(target_base, base, src_dir_fd=target_dir, dst_dir_fd=dir_fd,
                follow_symlinks=False)
    finally:
        os.close(target_dir)


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


def _finish_dir(root_fd: int, entry: TOCEntry, keep_time: bool) -> None:
    parent_fd, base = _open_parent(root_fd, entry.name)
    try:
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    try:
        _apply_metadata(fd, entry, keep_time)
    finally:
        os.close(fd)

