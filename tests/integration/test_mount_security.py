"""`stargz mount` must not hand root to local users (issue 16, points 4 and 8), tried as the
review did: an image whose top layer holds a setuid-root binary (prints its effective uid) and
device nodes (a copy of /dev/null and one of /dev/mem), mounted through the real registry, FUSE
and overlayfs, then used from the host as ``nobody``.

- read-only and ``--rw``, one layer (a bind mount) and two (an overlay): the binary runs as
  nobody, the device nodes can not be opened, and ``findmnt`` shows ``nosuid,nodev`` on the
  mountpoint and on the FUSE mount beneath it;
- ``--allow-setuid-and-devices`` gives euid 0 and a live device: the attack the flag names;
- under umask 000, the daemon's state directory, log, upper dir and chunk cache are not
  writable by others, and the writable root keeps the image's 0755.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    Mounts,
    estargz_layer,
    mounts_fixture,
    push,
    registry_fixture,
    write_layout,
)
from tests.support.images import busybox_rootfs_tar, cached_file
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOBODY_UID = 65534
EUID_SOURCE = b'#include <stdio.h>\n#include <unistd.h>\nint main(void) ' \
              b'{ printf("%d\\n", (int)geteuid()); return 0; }\n'
# Opened by nobody only, read-only: the kernel itself refuses /dev/mem without CAP_SYS_RAWIO.
DEVICES = {"dev/null-copy": (1, 3), "dev/mem-copy": (1, 1)}
OPEN_AS_NOBODY = ("import errno, os, sys\ntry:\n os.close(os.open(sys.argv[1], os.O_RDONLY))\n"
                  " print('opened')\nexcept OSError as err:\n print(errno.errorcode[err.errno])")


def euid_binary() -> Path:
    """A static binary printing its effective uid (cached; needs a C compiler once)."""
    def build(work: Path, out: Path) -> None:
        work.mkdir(parents=True)
        (work / "euid.c").write_bytes(EUID_SOURCE)
        subprocess.run(["cc", "-static", "-O2", "-o", str(out), str(work / "euid.c")],
                       check=True)

    return cached_file("euid-static-v1", build)


def attack_layer_tar() -> bytes:
    """bin/euid setuid root, dev/null-copy and dev/mem-copy 0666, as an image could ship them."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("bin", "dev"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        data = euid_binary().read_bytes()
        info = tarfile.TarInfo("bin/euid")
        info.size, info.mode, info.mtime = len(data), 0o4755, 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
        for name, (major, minor) in DEVICES.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.CHRTYPE, 0o666, 1_700_000_000
            info.devmajor, info.devminor = major, minor
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture(scope="module", name="images")
def images_fixture(registry: RunningRegistry,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``two``: busybox then the attack layer; ``one``: the attack layer alone."""
    work = tmp_path_factory.mktemp("layouts")
    attack, busybox = attack_layer_tar(), busybox_rootfs_tar().read_bytes()
    two = write_layout(work / "two", [estargz_layer(work / "two", busybox),
                                      estargz_layer(work / "two", attack)], "v1")
    one = write_layout(work / "one", [estargz_layer(work / "one", attack)], "v1")
    return {"two": f"{registry.host}/{push(two, registry.host, 'test/setuid-two:v1')}",
            "one": f"{registry.host}/{push(one, registry.host, 'test/setuid-one:v1')}"}


@pytest.fixture(name="public")
def public_fixture() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="stargz-security-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mount_options(path: Path) -> set[str]:
    done = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", "--mountpoint", str(path)],
                          capture_output=True, text=True, check=True)
    assert len(done.stdout.splitlines()) == 1, done.stdout
    return set(done.stdout.strip().split(","))


def run_as_nobody(*argv: str) -> str:
    done = subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def open_as_nobody(path: Path) -> str:
    return run_as_nobody("/usr/bin/python3", "-c", OPEN_AS_NOBODY, str(path))


CASES = [("two", ()), ("two", ("--rw",)), ("one", ()), ("one", ("--rw",))]


@pytest.mark.parametrize(("image", "flags"), CASES, ids=["2-layers", "2-layers-rw", "1-layer",
                                                         "1-layer-rw"])
def test_setuid_and_devices_are_dead_for_local_users(images: dict[str, str], mounts: Mounts,
                                                     public: Path, image: str,
                                                     flags: tuple[str, ...]) -> None:
    mnt = public / "mnt"
    mounts.mount(images[image], mnt, *flags)
    binary = os.lstat(mnt / "bin/euid")
    assert (binary.st_uid, stat.S_IMODE(binary.st_mode)) == (0, 0o4755)  # shown as shipped
    assert run_as_nobody(str(mnt / "bin/euid")) == str(NOBODY_UID)
    for name in DEVICES:
        assert stat.S_ISCHR(os.lstat(mnt / name).st_mode)
        assert open_as_nobody(mnt / name) == "EACCES"
    for mount in (mnt, mounts.state(mnt).fuse_dir):
        assert {"nosuid", "nodev"} <= mount_options(mount), mount
    mounts.umount(mnt)


@pytest.mark.parametrize(("image", "flags"), [("two", ()), ("one", ()), ("two", ("--rw",))],
                         ids=["2-layers", "1-layer", "2-layers-rw"])
def test_the_opt_out_flag_grants_what_it_says(images: dict[str, str], mounts: Mounts,
                                              public: Path, image: str,
                                              flags: tuple[str, ...]) -> None:
    mnt = public / "mnt"
    mounts.mount(images[image], mnt, "--allow-setuid-and-devices", *flags)
    assert run_as_nobody(str(mnt / "bin/euid")) == "0"
    assert open_as_nobody(mnt / "dev/null-copy") == "opened"
    for mount in (mnt, mounts.state(mnt).fuse_dir):
        assert not {"nosuid", "nodev"} & mount_options(mount), mount
    mounts.umount(mnt)


def modes_under(root: Path, image_dirs: tuple[Path, ...] = ()) -> dict[str, int]:
    """The permission bits of ``root`` and of everything under it, by relative path; not
    into ``image_dirs`` (the FUSE mount, the upper dir), whose modes are the image's."""
    found = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(directory) / d not in image_dirs]
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def _chunk_files_written(cache: Path) -> dict[str, int]:
    """The cache's modes once a chunk file (sha256/ab/<digest>) is there: chunks reach the disk
    through a write-behind thread, after the read that fetched them returned."""
    deadline = time.monotonic() + 30
    while True:
        cached = modes_under(cache)
        if any(path.count("/") == 2 for path in cached) or time.monotonic() > deadline:
            assert any(path.count("/") == 2 for path in cached), cached
            return cached
        time.sleep(0.1)


def test_daemon_files_are_private_under_umask_000(images: dict[str, str], mounts: Mounts,
                                                  public: Path, tmp_path: Path) -> None:
    mnt, cache = public / "mnt", tmp_path / "new/cache"
    mounts.state_root = tmp_path / "run/stargz/mounts"  # made by the daemon, parents too
    old = os.umask(0)
    try:
        mounts.mount(images["two"], mnt, "--rw", "--cache-dir", str(cache))
    finally:
        os.umask(old)
    assert (mnt / "bin/euid").read_bytes()[:4] == b"\x7fELF"  # through the chunk cache
    state = mounts.state(mnt)
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o755  # the merged root: the image's mode
    assert stat.S_IMODE(os.stat(state.upper_dir).st_mode) == 0o755
    for directory in (tmp_path / "run/stargz", mounts.state_root, state.directory, cache):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(state.log_file).st_mode) == 0o600
    cached = _chunk_files_written(cache)
    kept = modes_under(state.directory, (state.fuse_dir, state.upper_dir))
    assert {"pid", "daemon.log", "blobs", "work"} <= set(kept), kept
    kept = {path: mode for path, mode in kept.items() if path not in ("fuse", "upper")}
    assert {path: mode for path, mode in {**cached, **kept}.items() if mode & 0o077} == {}
    mounts.umount(mnt)
