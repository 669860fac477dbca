"""Real test inputs, built once and cached: a tiny busybox rootfs, a debootstrap python3 rootfs.

The debootstrap builder, the tar helpers and make_oci_image live in stargz.hellobench (debian,
oci): HelloBench builds its images with the same code; they are re-exported here.
Everything lands in the test cache (``$STARGZ_TEST_CACHE``, default ``/var/cache/stargz-tests``).
Builds happen in a temporary directory inside the cache and are renamed into place, under a file
lock, so concurrent or interrupted runs never see half a file. Needs root (mknod, chroot, xattrs).

    busybox_rootfs_tar()       ~2 MB tar: busybox-static, applet symlinks, hardlinks, a fifo,
                               a char device, xattrs, setuid/setgid/sticky modes, an empty file
    debian_python_rootfs_tar() ~170 MB tar: debootstrap bookworm minbase + python3 (slow: ~1 min)
    extract_tar(tar, dest)     unpack one of them (GNU tar, keeps owners, xattrs, devices)
    make_oci_image(rootfs, layout, tag)  an OCI image layout (umoci) from a rootfs directory
    reference_case_tar(out, format, prefix)  the Go reference suite's cases as one small tar
    quirks_case_tar(out)       a tar already holding a TOC entry, landmarks, a repeated path
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from stargz.hellobench import debian
from stargz.hellobench.debian import FIXED_MTIME, cached_path, extract_tar, tar_directory
from stargz.hellobench.oci import make_oci_image

__all__ = ["busybox_rootfs_tar", "cache_dir", "cached_file", "debian_python_rootfs_tar",
           "extract_tar", "make_oci_image", "quirks_case_tar", "reference_case_tar",
           "tar_directory"]

DEFAULT_CACHE = Path("/var/cache/stargz-tests")
# Bump a recipe's version when its contents change, so stale cached copies are not reused.
BUSYBOX_TAR = "busybox-rootfs-v2.tar"


def cache_dir() -> Path:
    path = Path(os.environ.get("STARGZ_TEST_CACHE") or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_file(name: str, build: Callable[[Path, Path], None]) -> Path:
    """The cached file `name`, calling ``build(workdir, out)`` to make it when it is missing.

    ``build`` writes ``out``; ``workdir`` is scratch space removed afterwards.
    """
    return cached_path(cache_dir(), name, build)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def populate_busybox_rootfs(root: Path) -> None:
    """A small runnable rootfs exercising every entry type the format knows."""
    for d in ("bin", "dev", "etc", "tmp", "usr/share/doc", "var/empty", "srv/data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    applets = subprocess.run(
        ["/bin/busybox", "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet not in ("busybox", "su", "ls"):
            (root / "bin" / applet).symlink_to("busybox")
    os.link(root / "bin/busybox", root / "bin/ls")  # a hardlink to a 2 MB multi-chunk file
    _write(root / "bin/su", b"#!/bin/sh\nexec /bin/busybox su \"$@\"\n", 0o4755)
    _write(root / "etc/motd", b"hello from the stargz busybox test image\n")
    _write(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc/group", b"root:x:0:\nstaff:x:50:\n")
    os.link(root / "etc/motd", root / "etc/motd.hardlink")
    (root / "etc/motd.symlink").symlink_to("motd")
    (root / "usr/share/doc/abs-link").symlink_to("/etc/motd")
    _write(root / "etc/empty.conf", b"")
    _write(root / "usr/share/doc/sgid-tool", b"#!/bin/sh\n", 0o2755)
    os.chmod(root / "tmp", 0o1777)
    os.mkfifo(root / "var/empty/fifo", 0o600)
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    _write(root / "srv/data/with-xattrs", b"xattr carrier\n")
    os.setxattr(root / "srv/data/with-xattrs", "user.stargz.test", b"value-1")
    # Not empty: PAX forbids empty SCHILY.xattr values (umoci drops them with a warning).
    os.setxattr(root / "srv/data/with-xattrs", "user.stargz.other", b"\x01binary\xff")
    os.setxattr(root / "srv/data", "user.stargz.dir", b"dir-value")
    # Pseudo-random bytes do not compress: several members per file at small chunk sizes.
    _write(root / "srv/data/random.bin", _pseudo_random(300_000))
    _write(root / "srv/data/zeros.bin", bytes(1 << 20))
    os.chown(root / "srv/data/random.bin", 1000, 50)


def _pseudo_random(size: int) -> bytes:
    import hashlib

    blocks = (hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def busybox_rootfs_tar() -> Path:
    def build(work: Path, out: Path) -> None:
        root = work / "rootfs"
        root.mkdir(parents=True)
        populate_busybox_rootfs(root)
        tar_directory(root, out)

    return cached_file(BUSYBOX_TAR, build)


def debian_python_rootfs_tar() -> Path:
    return debian.debian_python_rootfs_tar(cache_dir())


# The reference suite's tar cases: every tar format, every path prefix it tries.
TAR_FORMATS = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}
PATH_PREFIXES = ("", "./", "/", "../")
CASE_PRIORITIZED = ("foo/hard", "big/random.bin", "no/such/file")  # the last one is missing


def reference_case_tar(out: Path, tar_format: str, prefix: str) -> Path:
    """A small tar of every entry kind, names written with `prefix` (e.g. "./foo/bar.txt").

    Regular files and directories (xattrs on them with PAX), empty files, symlinks, hardlinks,
    char/block devices, a fifo, setuid/setgid/sticky modes, owners with names, a directory left
    implicit, a file big enough to split into many chunks at tiny chunk sizes.
    """
    with tarfile.open(out, "w", format=TAR_FORMATS[tar_format]) as tar:
        for info, data in _reference_case_entries(prefix, xattrs=tar_format == "pax"):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def _reference_case_entries(
    prefix: str, *, xattrs: bool
) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    def entry(name: str, kind: bytes, mode: int, data: bytes | None = None,
              **fields: object) -> tuple[tarfile.TarInfo, bytes | None]:
        info = tarfile.TarInfo(prefix + name)
        info.type, info.mode, info.mtime = kind, mode, FIXED_MTIME
        info.size = len(data) if data is not None else 0
        for key, value in fields.items():
            setattr(info, key, value)
        return info, data

    def with_xattrs(item: tuple[tarfile.TarInfo, bytes | None], **values: str) -> tuple[
        tarfile.TarInfo, bytes | None
    ]:
        if xattrs:
            item[0].pax_headers = {f"SCHILY.xattr.user.{k}": v for k, v in values.items()}
        return item

    if prefix:
        yield entry("", tarfile.DIRTYPE, 0o755)  # the root itself, as "./" or "/"
    yield with_xattrs(entry("foo/", tarfile.DIRTYPE, 0o755), dirattr="dir-value")
    yield with_xattrs(entry("foo/bar.txt", tarfile.REGTYPE, 0o644, b"test data of bar.txt\n" * 5),
                      fileattr="file-value", second="2")
    yield entry("foo/empty", tarfile.REGTYPE, 0o644, b"")
    yield entry("foo/sym", tarfile.SYMTYPE, 0o777, linkname="bar.txt")
    yield entry("foo/hard", tarfile.LNKTYPE, 0o644, linkname=prefix + "foo/bar.txt")
    yield entry("dev/", tarfile.DIRTYPE, 0o755)
    yield entry("dev/char", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
    yield entry("dev/block", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=1)
    yield entry("dev/fifo", tarfile.FIFOTYPE, 0o600)
    yield entry("modes/", tarfile.DIRTYPE, 0o1777)
    yield entry("modes/setuid", tarfile.REGTYPE, 0o4755, b"#!/bin/sh\n")
    yield entry("modes/setgid", tarfile.REGTYPE, 0o2711, b"#!/bin/sh\necho\n")
    yield entry("modes/owned", tarfile.REGTYPE, 0o640, b"owned by alice\n",
                uid=1000, gid=1001, uname="alice", gname="staff")
    yield entry("implied/deep/file.txt", tarfile.REGTYPE, 0o644, b"parents not in the tar\n")
    yield entry("big/", tarfile.DIRTYPE, 0o755)
    yield entry("big/random.bin", tarfile.REGTYPE, 0o644, _pseudo_random(1200))
    yield entry("big/text.txt", tarfile.REGTYPE, 0o644, b"".join(
        b"line %d of a text file that compresses well\n" % i for i in range(20)))


def quirks_case_tar(out: Path) -> Path:
    """A tar that already holds what a builder adds itself: a `stargz.index.json` entry and
    both landmark files (the reference drops or replaces them), plus a repeated path.

    Its directory is in the tar: the 0.12 reference can not prioritize files of implied ones.
    """
    members: list[tuple[str, bytes | None]] = [
        ("stargz.index.json", b'{"version": 1, "entries": []}'),
        ("app/", None),
        (".prefetch.landmark", b"\x0f"),
        ("app/main.py", b"print('hello')\n"),
        (".no.prefetch.landmark", b"\x0f"),
        ("app/data.txt", b"first version\n"),
        ("app/data.txt", b"second version wins\n"),
    ]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, FIXED_MTIME
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out
