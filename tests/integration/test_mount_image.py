"""`stargz mount` / `stargz umount` for real: a docker-registry, FUSE, overlayfs.

The image: the busybox rootfs, then a layer that whites out a file, makes a directory opaque,
adds files and a big incompressible file nobody reads. Every file of the mounted root is
compared with the rootfs the layers make when unpacked the plain way (content, modes, owners,
links, hardlinks, xattrs, devices). The same image with plain gzip layers mounts too (downloaded
in full, with a notice). A killed daemon is cleaned up by `stargz umount` or a fresh mount.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from stargz.estargz.writer import BuildOptions, build
from stargz.imagemount.state import MountState
from tests.support.images import busybox_rootfs_tar, extract_tar
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER2_TEXT = b"from the second layer\n"
NEW_DATA_TEXT = b"srv/data was made opaque by the second layer\n"
BIG_FILE = "big/noise.bin"
BIG_SIZE = 8 << 20
CHUNK_SIZE = 1 << 20
MOUNT_TIMEOUT_S = 60


# -- the image ------------------------------------------------------------------------------


def noise(size: int, seed: bytes = b"stargz mount test") -> bytes:
    """Incompressible bytes: the blob is as big as the file, so skipping them shows."""
    base = hashlib.sha256(seed).digest()
    return b"".join(hashlib.sha256(base + i.to_bytes(8, "big")).digest()
                    for i in range(size // 32 + 1))[:size]


def layer2_tar() -> bytes:
    """Whiteout of etc/motd.symlink, opaque srv/data, new files, a big file never read."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("etc", "srv", "srv/data", "big"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        files = [("etc/.wh.motd.symlink", b""), ("srv/data/.wh..wh..opq", b""),
                 ("etc/layer2", LAYER2_TEXT), ("srv/data/new.txt", NEW_DATA_TEXT),
                 (BIG_FILE, noise(BIG_SIZE))]
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def expected_rootfs(dest: Path) -> Path:
    """The root the two layers make, unpacked by GNU tar and the whiteouts applied by hand."""
    extract_tar(busybox_rootfs_tar(), dest)
    (dest / "etc/motd.symlink").unlink()
    shutil.rmtree(dest / "srv/data")
    staging = dest.parent / "layer2"
    staging.mkdir()
    (staging / "layer2.tar").write_bytes(layer2_tar())
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(staging / "layer2.tar"),
                    "-C", str(dest), "--exclude=*.wh.*"], check=True)
    shutil.rmtree(staging)
    return dest


def put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def estargz_layer(layout: Path, tar: bytes, level: int = 6) -> tuple[dict[str, Any], str]:
    blob = io.BytesIO()
    result = build(io.BytesIO(tar), blob, BuildOptions(chunk_size=CHUNK_SIZE, level=level))
    descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": put_blob(layout, blob.getvalue()),
                  "size": result.blob_size, "annotations": result.annotations()}
    return descriptor, result.diff_id


def gzip_layer(layout: Path, tar: bytes) -> tuple[dict[str, Any], str]:
    data = gzip.compress(tar, compresslevel=1, mtime=0)
    descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": put_blob(layout, data),
                  "size": len(data)}
    return descriptor, "sha256:" + hashlib.sha256(tar).hexdigest()


def write_layout(layout: Path, layers: Sequence[tuple[dict[str, Any], str]], tag: str) -> str:
    """An OCI layout holding one linux/amd64 image of ``layers``; returns ``oci:DIR:TAG``."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(layout, config.encode()), "size": len(config)},
        "layers": [descriptor for descriptor, _ in layers],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put_blob(layout, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return f"oci:{layout}:{tag}"


def push(source: str, registry: str, name: str) -> str:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source,
                    f"docker://{registry}/{name}"], check=True)
    return name


def build_images(registry: str, work: Path, level: int = 6, suffix: str = "") -> dict[str, str]:
    """Pushes ``test/estargz<suffix>:v1`` and ``test/gzip<suffix>:v1``; returns repository:tag
    by kind."""
    busybox = busybox_rootfs_tar().read_bytes()
    estargz = write_layout(work / "estargz", [estargz_layer(work / "estargz", busybox, level),
                                              estargz_layer(work / "estargz", layer2_tar())],
                           "v1")
    plain = write_layout(work / "gzip", [gzip_layer(work / "gzip", busybox),
                                         gzip_layer(work / "gzip", layer2_tar())], "v1")
    return {"estargz": push(estargz, registry, f"test/estargz{suffix}:v1"),
            "gzip": push(plain, registry, f"test/gzip{suffix}:v1")}


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="module", name="images")
def images_fixture(registry: RunningRegistry,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_images(registry.host, tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="module", name="expected")
def expected_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return expected_rootfs(tmp_path_factory.mktemp("expected") / "rootfs")


# -- running the command --------------------------------------------------------------------


class Mounts:
    """`stargz mount` / `umount` with a private state directory; unmounts what is left."""

    def __init__(self, work: Path) -> None:
        self.state_root = work / "state"
        self.mountpoints: list[Path] = []

    def mount(self, image: str, mountpoint: Path, *args: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoints.append(mountpoint)
        done = stargz("mount", "--plain-http", "--state-dir", str(self.state_root), *args,
                      image, str(mountpoint))
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def umount(self, mountpoint: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = stargz("umount", "--state-dir", str(self.state_root), str(mountpoint))
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def state(self, mountpoint: Path) -> MountState:
        return MountState.of(mountpoint, self.state_root)

    def daemon_log(self, mountpoint: Path) -> str:
        path = self.state(mountpoint).log_file
        return path.read_text() if path.exists() else ""

    def cleanup(self) -> None:
        for mountpoint in self.mountpoints:
            if self.state(mountpoint).exists() or mounted(mountpoint):
                self.umount(mountpoint, check=False)


def stargz(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stargz.cli.main", *args], capture_output=True,
                          text=True, timeout=MOUNT_TIMEOUT_S, check=False)


@pytest.fixture(name="mounts")
def mounts_fixture(tmp_path: Path) -> Iterator[Mounts]:
    mounts = Mounts(tmp_path)
    try:
        yield mounts
    finally:
        mounts.cleanup()


def mounted(path: Path) -> bool:
    target = str(path)
    return any(line.split()[4] == target
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


# -- comparing trees ------------------------------------------------------------------------


def describe_tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` with what a reader sees of it."""
    tree: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            tree[str(path.relative_to(root))] = describe(path)
    return tree


def describe(path: Path) -> tuple[Any, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(kind):
        detail: Any = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(kind):
        detail = os.readlink(path)
    elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        detail = None
    # overlayfs' own markers are not image content; the layers carry user.overlay.opaque too
    # (for userxattr mounts, as the reference does) and a non-userxattr overlay shows it
    xattrs = {} if stat.S_ISLNK(kind) else {
        key: os.getxattr(path, key) for key in os.listxattr(path)
        if not key.startswith(("trusted.overlay.", "user.overlay.", "security."))}
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, xattrs)


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    by_inode: dict[int, set[str]] = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                by_inode.setdefault(st.st_ino, set()).add(str(path.relative_to(root)))
    return {frozenset(names) for names in by_inode.values() if len(names) > 1}


def assert_same_tree(mounted_root: Path, expected: Path) -> None:
    want, got = describe_tree(expected), describe_tree(mounted_root)
    assert sorted(got) == sorted(want)
    different = {path: (got[path], want[path]) for path in want if got[path] != want[path]}
    assert not different
    assert hardlink_groups(mounted_root) == hardlink_groups(expected) != set()


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["estargz", "gzip"])
def test_every_file_matches_the_unpacked_image(registry: RunningRegistry, images: dict[str, str],
                                               expected: Path, mounts: Mounts, tmp_path: Path,
                                               kind: str) -> None:
    mnt = tmp_path / "mnt"
    done = mounts.mount(f"{registry.host}/{images[kind]}", mnt)
    notices = [line for line in done.stderr.splitlines() if "not eStargz" in line]
    assert len(notices) == (2 if kind == "gzip" else 0), done.stderr
    assert_same_tree(mnt, expected)
    assert not (mnt / "etc/motd.symlink").exists()  # whited out by the second layer
    assert sorted(os.listdir(mnt / "srv/data")) == ["new.txt"]  # opaque: the lower's are gone
    with pytest.raises(OSError):
        (mnt / "etc/new").write_text("read-only")
    mounts.umount(mnt)
    assert not mounted(mnt)
    assert not mounts.state(mnt).exists()
    assert os.listdir(mnt) == []


def test_rw_mount_takes_writes_in_its_upper_dir(registry: RunningRegistry,
                                                images: dict[str, str], mounts: Mounts,
                                                tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mounts.mount(f"{registry.host}/{images['estargz']}", mnt, "--rw")
    (mnt / "etc/new").write_text("written\n")
    (mnt / "etc/layer2").unlink()
    upper = mounts.state(mnt).upper_dir
    assert (upper / "etc/new").read_text() == "written\n"
    assert stat.S_ISCHR(os.lstat(upper / "etc/layer2").st_mode)  # overlayfs' whiteout
    assert (mnt / "etc/motd").read_bytes().startswith(b"hello from the stargz")
    mounts.umount(mnt)
    assert not mounted(mnt)


def _kill_daemon(mounts: Mounts, mnt: Path) -> None:
    pid = int(mounts.state(mnt).pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the daemon was reparented: its zombie goes quickly
    with pytest.raises(OSError):
        os.listdir(mnt)  # the overlay over a dead FUSE mount


def test_killed_daemon_is_cleaned_up_by_umount_or_a_fresh_mount(
        registry: RunningRegistry, images: dict[str, str], mounts: Mounts,
        tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    image = f"{registry.host}/{images['estargz']}"
    mounts.mount(image, mnt)
    _kill_daemon(mounts, mnt)
    mounts.mount(image, mnt)  # a fresh mount clears the dead one first
    assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT
    _kill_daemon(mounts, mnt)
    done = mounts.umount(mnt)
    assert "daemon that is gone" in done.stderr
    assert not mounted(mnt)
    assert not mounted(mounts.state(mnt).fuse_dir)
    assert not mounts.state(mnt).exists()
    again = mounts.umount(mnt, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"stargz: error: {mnt} is not mounted by stargz"


def test_mounting_on_a_served_mountpoint_is_refused(registry: RunningRegistry,
                                                   images: dict[str, str], mounts: Mounts,
                                                   tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    image = f"{registry.host}/{images['estargz']}"
    mounts.mount(image, mnt)
    second = mounts.mount(image, mnt, check=False)
    assert second.returncode == 1
    assert "already served by stargz daemon" in second.stderr
    assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT  # the first mount is unharmed


def test_missing_image_is_one_error_and_leaves_nothing(registry: RunningRegistry,
                                                      mounts: Mounts, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    done = mounts.mount(f"{registry.host}/test/nothing:here", mnt, check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("stargz: error: ")
    assert not mounted(mnt)
    assert not mounts.state(mnt).exists()


def test_foreground_serves_until_interrupted(registry: RunningRegistry, images: dict[str, str],
                                            mounts: Mounts, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounts.mountpoints.append(mnt)
    with subprocess.Popen(
            [sys.executable, "-m", "stargz.cli.main", "mount", "--foreground", "--plain-http",
             "--state-dir", str(mounts.state_root), f"{registry.host}/{images['gzip']}",
             str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as daemon:
        try:
            assert daemon.stdout is not None
            line = daemon.stdout.readline()  # printed once the mount is usable
            assert f"mounted on {mnt} (0 of 2 layers lazy)" in line
            assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT
            daemon.send_signal(signal.SIGINT)
            assert daemon.wait(timeout=MOUNT_TIMEOUT_S) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert not mounted(mnt)
    assert not mounts.state(mnt).exists()
