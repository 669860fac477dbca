"""Our snapshotter as containerd 1.6's proxy snapshotter: pull, run, restart, ls, rm — all real."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.containerd import Containerd, SnapshotterProcess, stop_process
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image

pytestmark = pytest.mark.integration

MOTD = "hello from the stargz busybox test image\n"
LAYER2_TEXT = "second layer\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local docker-registry on a free port; yields host:port."""
    work = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{_free_port()}"
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {work / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: {host}}}\n"
    )
    log = (work / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield host
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def image(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A two-layer busybox image pushed to the registry (so mounts have a real lowerdir chain)."""
    work = tmp_path_factory.mktemp("image")
    rootfs = work / "rootfs"
    extract_tar(busybox_rootfs_tar(), rootfs)
    layout = work / "oci"
    source = make_oci_image(rootfs, layout, "v1")
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (bundle / "rootfs/etc/layer2").write_text(LAYER2_TEXT)
    subprocess.run(
        ["umoci", "repack", "--image", f"{layout}:v1", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ref = f"{registry}/test/busybox:v1"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source, f"docker://{ref}"],
        check=True,
    )
    return ref


@dataclass
class Stack:
    snapshotter: SnapshotterProcess
    containerd: Containerd

    def restart_snapshotter(self) -> None:
        assert self.snapshotter.stop() == 0, self.snapshotter.log_text()
        self.snapshotter.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    snap = SnapshotterProcess(work / "stargz.sock", work / "snap-root", work / "snap.log")
    snap.start()  # before containerd: see tests/support/containerd.py
    ctd = Containerd(work / "containerd", snap.address)
    ctd.start()
    try:
        yield Stack(snap, ctd)
    finally:
        ctd.stop()
        snap.stop()
        shutil.rmtree(work, ignore_errors=True)


def _snapshots(stack: Stack) -> list[list[str]]:
    out = stack.containerd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout
    return [line.split() for line in out.splitlines()[1:]]


def test_pull_and_run_two_layer_image(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    committed = [row for row in _snapshots(stack) if row[-1] == "Committed"]
    assert len(committed) == 2  # one per layer, the second on top of the first

    out = stack.containerd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "stargz",
        image,
        "t-run",
        "sh",
        "-c",
        "cat /etc/motd /etc/layer2; echo written > /tmp/w; cat /tmp/w",
    ).stdout
    assert out == MOTD + LAYER2_TEXT + "written\n"
    # --rm removed the container's active snapshot: only the layers remain
    assert [row[-1] for row in _snapshots(stack)] == ["Committed", "Committed"]


def test_layers_are_stored_like_overlayfs(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    dirs = sorted((stack.snapshotter.root / "snapshots").iterdir())
    tops = [d for d in dirs if (d / "fs/etc/layer2").exists()]
    bases = [d for d in dirs if (d / "fs/bin/busybox").exists()]
    assert len(tops) == 1 and len(bases) == 1
    assert (bases[0] / "fs/etc/motd").read_text() == MOTD
    assert (tops[0] / "fs/etc/layer2").read_text() == LAYER2_TEXT
    assert not (tops[0] / "fs/bin/busybox").exists()  # the upper layer holds only its diff


def test_restart_between_pull_and_run_keeps_everything(stack: Stack, image: str) -> None:
    stack.containerd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    before = _snapshots(stack)
    stack.restart_snapshotter()
    out = stack.containerd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "t-restart", "cat", "/etc/layer2"
    )
    assert out == LAYER2_TEXT
    assert _snapshots(stack) == before


def test_snapshots_ls_prepare_rm(stack: Stack, image: str) -> None:
    ctd = stack.containerd
    ctd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", image)
    rows = _snapshots(stack)
    # rows are KEY [PARENT] KIND: the layer with a parent is the top one
    top, base = next(r[0] for r in rows if len(r) == 3), next(r[0] for r in rows if len(r) == 2)

    ctd.ctr("snapshots", "--snapshotter", "stargz", "prepare", "scratch", top)
    mounts = ctd.ctr("snapshots", "--snapshotter", "stargz", "mounts", "/mnt", "scratch").stdout
    assert "overlay" in mounts and "lowerdir=" in mounts and "upperdir=" in mounts
    info = json.loads(ctd.ctr("snapshots", "--snapshotter", "stargz", "info", "scratch").stdout)
    assert info["Kind"] == "Active" and info["Parent"] == top

    refused = ctd.ctr("snapshots", "--snapshotter", "stargz", "rm", base, check=False)
    assert refused.returncode != 0 and "child" in refused.stderr

    ctd.ctr("snapshots", "--snapshotter", "stargz", "rm", "scratch")
    assert "scratch" not in [r[0] for r in _snapshots(stack)]
