"""Debian root filesystems built with debootstrap, cached on disk (the tests' inputs and
HelloBench's images share this one copy).

A cached build lands in a temporary directory inside the cache and is renamed into place under a
file lock, so concurrent or interrupted runs never see half a file. Needs root (chroot, mount).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stargz.errors import RuntimeIntegrationError

# Bump a recipe's version when its contents change, so stale cached copies are not reused.
DEBIAN_TAR = "bookworm-python3-rootfs-v1.tar"
SUITE = "bookworm"
FIXED_MTIME = 1_700_000_000  # deterministic tars: same recipe, same bytes
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@contextlib.contextmanager
def locked(cache: Path, name: str) -> Iterator[None]:
    """Hold the cache's lock for `name` (an flock: released if the holder dies)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_path(cache: Path, name: str, build: Callable[[Path, Path], None]) -> Path:
    """``cache/name``, calling ``build(workdir, out)`` to make it when it is missing.

    ``build`` writes ``out`` (a file or a directory); ``workdir`` is scratch space removed
    afterwards.
    """
    final = cache / name
    if final.exists():
        return final
    with locked(cache, name):
        if final.exists():  # another process built it while we waited
            return final
        remove_stale_builds(cache, name)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".build-{name}-") as tmp:
            out = Path(tmp) / name
            build(Path(tmp) / "work", out)
            os.replace(out, final)
    return final


def remove_stale_builds(cache: Path, name: str) -> None:
    """Scratch dirs of a killed build of `name` (safe: we hold its lock, nobody else builds it)."""
    for stale in cache.glob(f".build-{name}-*"):
        for mount in _mounts_under(stale):  # a build killed inside its chroot step
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(stale, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def tar_directory(root: Path, out: Path) -> None:
    """Pack `root`'s contents (names without a ./ prefix, like registry layers) as a PAX tar.

    Owners are numeric, mtimes fixed, xattrs kept as SCHILY.xattr PAX records; hardlinks are
    recorded as such (tarfile tracks inodes). Sockets are skipped, as tar tools do.
    """

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = FIXED_MTIME
        info.uname = info.gname = ""
        if not info.islnk():
            records = dict(info.pax_headers)
            for key, value in _xattrs(root / info.name).items():
                # tarfile encodes PAX values as UTF-8 text; our xattrs are text.
                records[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
            info.pax_headers = records
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(root)):
            tar.add(root / name, arcname=name, filter=normalize)


def _xattrs(path: Path) -> dict[str, bytes]:
    if path.is_symlink():
        return {}
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    return {n: os.getxattr(path, n) for n in sorted(names) if not n.startswith("security.")}


def extract_tar(tar: Path, dest: Path) -> None:
    """Unpack `tar` into `dest` (GNU tar: keeps owners, xattrs, devices)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tar), "-C",
         str(dest)],
        check=True,
    )


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line format)."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if not source.exists():
            continue
        for line in source.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and not words[1].endswith("-security"):
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and not words[1].endswith("-security"):
                return words[1]
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc and a tmpfs /dev/shm inside `root` while a chroot step runs (both unmounted after,
    lazily if busy: a temp dir's cleanup can not cross a mount left behind)."""
    points = [("proc", "proc", root / "proc"), ("tmpfs", "tmpfs", root / "dev/shm")]
    mounted: list[Path] = []
    try:
        for kind, source, point in points:
            point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", kind, source, str(point)], check=True)
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


def apt_install(root: Path, packages: Sequence[str], *, update: bool) -> None:
    """``apt-get install --no-install-recommends`` in the chroot `root`; services are not started
    (policy-rc.d), and the apt lists and package cache are removed afterwards."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = {**os.environ, **APT_ENV}
    try:
        with chroot_mounts(root):
            if update:
                _checked(["chroot", str(root), "apt-get", "update", "-q"], env)
            _checked(["chroot", str(root), "apt-get", "install", "-y", "-q",
                      "--no-install-recommends", *packages], env)
    finally:
        policy.unlink()
    for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
        shutil.rmtree(root / junk, ignore_errors=True)
        (root / junk / "partial").mkdir(parents=True)
    for binfile in (root / "var/cache/apt").glob("*.bin"):
        binfile.unlink()


def _checked(argv: Sequence[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeIntegrationError(f"{' '.join(argv[2:4])} failed ({done.returncode}): {last}")


def build_debian_python_rootfs(root: Path) -> None:
    """debootstrap bookworm minbase plus python3, apt lists and package cache removed."""
    _checked(["debootstrap", "--variant=minbase", SUITE, str(root), debian_mirror()],
             dict(os.environ))
    apt_install(root, ["python3"], update=False)


def debian_python_rootfs_tar(cache: Path) -> Path:
    """The cached tar of :func:`build_debian_python_rootfs` (~170 MB; ~1 min to build)."""

    def build(work: Path, out: Path) -> None:
        root = work / "rootfs"
        build_debian_python_rootfs(root)
        tar_directory(root, out)

    return cached_path(cache, DEBIAN_TAR, build)
