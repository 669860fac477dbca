"""The lazy filesystem under a real FUSE mount (and real overlayfs on top of it)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stargz.errors import RuntimeIntegrationError
from stargz.fs.mount import (
    FuseThread,
    LazyFS,
    cleanup_stale,
    is_mounted,
    is_stale,
    unmount,
    wait_mounted,
)
from tests.support.images import busybox_rootfs_tar
from tests.unit.test_fs_layers import (
    BuiltLayer,
    build_layer,
    corrupt_chunk,
    lower_upper,
    make_tar,
)

pytestmark = pytest.mark.integration
BAD_CONTENT = bytes(range(256)) * 400


class Server:
    """``python -m stargz.fs.serve`` in a child process, stopped by its own PID."""

    def __init__(self, mountpoint: Path, layers: list[BuiltLayer], *extra: str) -> None:
        if not is_mounted(mountpoint):  # a stale mount is left for the server to clear
            mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        specs = [f"{layer.blob}={layer.toc_digest}" for layer in layers]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stargz.fs.serve", str(mountpoint), *specs, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready", or EOF if it failed
        if line.strip() != b"ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"server did not start: {err.decode()}")

    def layer_dir(self, layer: BuiltLayer) -> Path:
        return self.mountpoint / layer.digest

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        self.stderr = err.decode()
        return self.proc.returncode


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltLayer]:
    tmp = tmp_path_factory.mktemp("layers")
    lower, upper = lower_upper(tmp)
    bad_src = build_layer(make_tar([("bad", "file", BAD_CONTENT), ("ok", "file", "fine\n")]),
                          tmp / "bad-src.blob")
    return {
        "busybox": build_layer(busybox_rootfs_tar(), tmp / "busybox.blob"),
        "lower": lower,
        "upper": upper,
        "bad": corrupt_chunk(bad_src, "bad", tmp / "bad.blob"),
    }


@pytest.fixture(scope="module")
def server(layers: dict[str, BuiltLayer],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    srv = Server(tmp_path_factory.mktemp("fuse") / "mnt", list(layers.values()),
                 "--metrics", f"127.0.0.1:{port}")
    srv.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.stderr
    assert not is_mounted(srv.mountpoint)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_busybox_layer_matches_its_tar(server: Server, layers: dict[str, BuiltLayer]) -> None:
    root = server.layer_dir(layers["busybox"])
    checked = 0
    with tarfile.open(busybox_rootfs_tar()) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix("./").strip("/")
            if not rel:
                continue
            path = root / rel
            st = os.lstat(path)
            want = tar.getmember(member.linkname) if member.islnk() else member
            assert stat.S_IMODE(st.st_mode) == want.mode & 0o7777, rel
            assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (want.uid, want.gid, want.mtime)
            if member.islnk():
                target = os.lstat(root / member.linkname.removeprefix("./"))
                assert st.st_ino == target.st_ino and st.st_nlink == target.st_nlink >= 2
            if want.isreg():
                extracted = tar.extractfile(want)
                assert extracted is not None
                assert path.read_bytes() == extracted.read(), rel
            elif want.issym():
                assert os.readlink(path) == want.linkname
            elif want.ischr():
                assert stat.S_ISCHR(st.st_mode)
                assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (want.devmajor,
                                                                        want.devminor)
            elif want.isfifo():
                assert stat.S_ISFIFO(st.st_mode)
            elif want.isdir():
                assert stat.S_ISDIR(st.st_mode)
            want_xattrs = {k.removeprefix("SCHILY.xattr."): v for k, v in want.pax_headers.items()
                           if k.startswith("SCHILY.xattr.")}
            if want_xattrs:
                assert sorted(os.listxattr(path)) == sorted(want_xattrs)
                for key, value in want_xattrs.items():
                    assert os.getxattr(path, key) == value.encode("utf-8", "surrogateescape")
            checked += 1
    assert checked > 250  # busybox applets and the special files
    assert sorted(os.listdir(root)) == ["bin", "dev", "etc", "srv", "tmp", "usr", "var"]
    assert subprocess.run([str(root / "bin/busybox"), "true"], check=False).returncode == 0


def test_overlayfs_stacks_the_layers(server: Server, layers: dict[str, BuiltLayer],
                                     tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    merged.mkdir()
    lowers = [str(server.layer_dir(layers[n])).replace(":", "\\:") for n in ("upper", "lower")]
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(lowers),
                    str(merged)], check=True)
    try:
        found = sorted(str(p.relative_to(merged)) for p in merged.rglob("*"))
        assert found == ["a", "a/y", "a/z", "b", "b/keep", "opq", "opq/new"]
        assert (merged / "a/y").read_text() == "lower y\n"
        assert (merged / "a/z").read_text() == "upper z\n"
        assert (merged / "opq/new").read_text() == "new\n"
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    opq = server.layer_dir(layers["upper"]) / "opq"
    assert os.getxattr(opq, "trusted.overlay.opaque") == b"y"


def test_state_file_reports_the_layer(server: Server, layers: dict[str, BuiltLayer]) -> None:
    layer = layers["lower"]
    root = server.layer_dir(layer)
    assert ".stargz-snapshotter" not in os.listdir(root)
    state_file = root / ".stargz-snapshotter" / f"{layer.digest}.json"
    (root / "b/keep").read_bytes()
    state = json.loads(state_file.read_bytes())
    size = layer.blob.stat().st_size
    assert state["digest"] == layer.digest and state["size"] == size
    assert 0 < state["fetchedSize"] <= size
    assert state["fetchedPercent"] == pytest.approx(100.0 * state["fetchedSize"] / size)


def test_a_bad_chunk_is_eio_for_the_reader(server: Server, layers: dict[str, BuiltLayer]) -> None:
    root = server.layer_dir(layers["bad"])
    for _ in range(2):  # the error is not cached as data, and the second read does not hang
        with pytest.raises(OSError) as caught:
            (root / "bad").read_bytes()
        assert caught.value.errno == errno.EIO
    assert (root / "ok").read_text() == "fine\n"
    state = json.loads((root / ".stargz-snapshotter" / f"{layers['bad'].digest}.json").read_text())
    assert state["error"]


def test_metrics_exporter_and_read_ahead(server: Server, layers: dict[str, BuiltLayer]) -> None:
    digest = layers["busybox"].digest
    (server.layer_dir(layers["busybox"]) / "etc/motd").read_bytes()
    text = httpx.get(server.metrics_url).text  # type: ignore[attr-defined]
    assert f'stargz_fs_operations_total{{layer="{digest}",op="lookup"}}' in text
    assert f'stargz_fs_fetched_bytes_total{{kind="on_demand",layer="{digest}"}}' in text
    assert ('stargz_fs_operation_duration_microseconds_bucket{'
            f'layer="{digest}",le="1024.0",operation_type="read_on_demand"}}') in text
    dev = os.stat(server.mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert knob.read_text().strip() == "1024"
    vfs = os.statvfs(server.mountpoint)
    assert vfs.f_bsize == 4096 and vfs.f_files > 300 and vfs.f_bfree == 0


def test_killed_daemon_leaves_a_stale_mount_that_cleanup_removes(
    layers: dict[str, BuiltLayer], tmp_path: Path
) -> None:
    srv = Server(tmp_path / "mnt", [layers["lower"]])
    assert (srv.layer_dir(layers["lower"]) / "b/keep").read_text() == "keep me\n"
    srv.proc.kill()
    srv.proc.communicate(timeout=10)
    assert is_mounted(srv.mountpoint) and is_stale(srv.mountpoint)
    with pytest.raises(OSError) as caught:
        os.stat(srv.mountpoint)
    assert caught.value.errno == errno.ENOTCONN
    assert cleanup_stale(srv.mountpoint)
    assert not is_mounted(srv.mountpoint) and not cleanup_stale(srv.mountpoint)
    # and the directory can be mounted again
    again = Server(srv.mountpoint, [layers["lower"]])
    assert (again.layer_dir(layers["lower"]) / "a/x").read_text() == "lower x\n"
    again.proc.kill()
    again.proc.communicate(timeout=10)
    assert is_stale(srv.mountpoint)
    # a new daemon clears the stale mount it finds on its mountpoint by itself
    third = Server(srv.mountpoint, [layers["lower"]])
    assert (third.layer_dir(layers["lower"]) / "a/y").read_text() == "lower y\n"
    assert third.stop() == 0
    assert not is_mounted(srv.mountpoint)


def test_layers_join_a_live_mount_in_process(layers: dict[str, BuiltLayer],
                                             tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = LazyFS(mnt)
    thread = FuseThread(fs)
    thread.start()
    try:
        wait_mounted(mnt)
        assert os.listdir(mnt) == []
        directory = fs.add_layer(layers["upper"].view())
        assert (directory / "a/z").read_text() == "upper z\n"
        assert os.listdir(mnt) == [layers["upper"].digest]
        fs.remove_layer(layers["upper"].digest)
        assert os.listdir(mnt) == []
    finally:
        thread.stop()
    deadline = time.monotonic() + 10
    while is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_mounted(mnt)
    unmount(mnt)  # a no-op on a directory with nothing mounted


def test_a_mount_that_can_not_happen_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeIntegrationError, match="can not mount FUSE"):
        FuseThread(LazyFS(tmp_path / "missing")).start()


def test_a_failing_fetch_is_eio_not_a_hang(layers: dict[str, BuiltLayer], tmp_path: Path) -> None:
    blob = tmp_path / "vanishing.blob"
    shutil.copyfile(layers["lower"].blob, blob)
    layer = BuiltLayer(blob, layers["lower"].digest, layers["lower"].toc_digest)
    srv = Server(tmp_path / "mnt", [layer], "--no-background")
    try:
        os.truncate(blob, 0)  # the TOC was read at mount; every chunk fetch now comes up short
        with pytest.raises(OSError) as caught:
            (srv.layer_dir(layer) / "b/keep").read_bytes()
        assert caught.value.errno == errno.EIO
        state = json.loads((srv.layer_dir(layer) / ".stargz-snapshotter"
                            / f"{layer.digest}.json").read_text())
        assert "0 bytes" in state["error"]
    finally:
        assert srv.stop() == 0
    assert not is_mounted(srv.mountpoint)


def test_unmount_helper_detaches_a_busy_mount(layers: dict[str, BuiltLayer],
                                              tmp_path: Path) -> None:
    srv = Server(tmp_path / "mnt", [layers["lower"]])
    with (srv.layer_dir(layers["lower"]) / "b/keep").open("rb") as busy:
        unmount(srv.mountpoint)  # fusermount3 -u refuses (busy): detached lazily instead
        assert not is_mounted(srv.mountpoint)
        assert busy.read() == b"keep me\n"  # an open file keeps working until closed
    srv.proc.wait(timeout=10)  # the daemon sees its mount gone and exits by itself
    _, err = srv.proc.communicate(timeout=10)
    assert srv.proc.returncode == 0, err.decode()


def test_listings_hold_dot_and_dotdot(server: Server, layers: dict[str, BuiltLayer]) -> None:
    root = server.layer_dir(layers["busybox"])
    for directory, parent in ((root / "srv/data", root / "srv"), (root, server.mountpoint)):
        lines = subprocess.run(["ls", "-1ai", str(directory)], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        inodes = {name: int(ino) for ino, name in (line.split(maxsplit=1) for line in lines)}
        assert inodes["."] == os.stat(directory).st_ino
        assert inodes[".."] == os.stat(parent).st_ino
        assert sorted(set(inodes) - {".", ".."}) == sorted(os.listdir(directory))
