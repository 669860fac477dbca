"""Real daemons for snapshotter tests: our snapshotter (a subprocess) and containerd 1.6 using it
(stargz.hellobench.daemons, re-exported here), and the fixtures built on them.

Both run in a test's temporary directory and are stopped by their own PID. Start the snapshotter
BEFORE containerd: containerd's gRPC backoff to a proxy socket that appears late can refuse
calls for ~10 s (RECIPES.md).

    snap = SnapshotterProcess(tmp / "snap.sock", tmp / "snap-root", tmp / "snap.log"); snap.start()
    ctd = Containerd(tmp / "containerd", snap.address); ctd.start()
    ctd.ctr("images", "pull", "--snapshotter", "stargz", "--plain-http", ref)
    ctd.stop(); snap.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from stargz.hellobench import daemons
from stargz.hellobench.daemons import (
    CONTAINERD_CONFIG,
    PROXY_NAME,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Containerd,
    stop_process,
    wait_for_socket,
)
from stargz.snapshotter.remote import LABEL_STARGZ_DIGEST, LABEL_STARGZ_REFERENCE
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import run_registry

__all__ = ["CONTAINERD_CONFIG", "PROXY_NAME", "START_TIMEOUT_S", "STOP_TIMEOUT_S", "Containerd",
           "SnapshotterProcess", "stop_process", "wait_for_socket"]

REPO = Path(__file__).resolve().parents[2]


class SnapshotterProcess(daemons.SnapshotterProcess):
    """The package's, importing from this checkout (test launchers such as this module's
    ``__main__`` live under tests/)."""

    pythonpath = (str(REPO),)


# Garbage collection only when asked (``--sync`` removals): a test's unreferenced snapshots
# (ctr's views carry no gc.root label) then stay until the test is done with them.
NO_BACKGROUND_GC = """
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 0
  mutation_threshold = 1000000
  startup_delay = "1h"
"""


MOTD = "hello from the stargz busybox test image\n"  # /etc/motd of the busybox rootfs
LAYER2_TEXT = "second layer\n"


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local docker-registry on a free port; yields host:port."""
    with run_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry.host


@pytest.fixture(scope="module", name="image")
def image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
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


@pytest.fixture(scope="module", name="stack")
def stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
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


class ExtractingLayers:
    """A stand-in for the lazy layer store in end-to-end tests of the remote-snapshot handshake.

    It downloads the layer the stargz labels name from a plain-HTTP registry and unpacks it
    (nothing lazy about it), so containerd's side of the handshake runs for real. Every call is
    appended as a JSON line to ``calls.jsonl`` in its directory for the test to read.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)

    def _record(self, call: str, **fields: str) -> None:
        with (self.base / "calls.jsonl").open("a") as calls:
            calls.write(json.dumps({"call": call, **fields}) + "\n")

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        reference = labels.get(LABEL_STARGZ_REFERENCE, "")
        digest = labels.get(LABEL_STARGZ_DIGEST, "")
        self._record("prepare", key=key, digest=digest, parents=",".join(parent_chain))
        if not reference or not digest:
            return None
        target = self.base / digest.replace(":", "-")
        await asyncio.to_thread(_fetch_and_unpack, reference, digest, target)
        return str(target)

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        self._record("restore", name=name, dir=previous_dir)
        return previous_dir if Path(previous_dir).is_dir() else None

    async def release(self, name: str, directory: str) -> None:
        self._record("release", name=name, dir=directory)

    async def check(self, name: str, directory: str) -> None:
        self._record("check", name=name, dir=directory)  # unpacked in full: nothing to wait for


def _fetch_and_unpack(reference: str, digest: str, target: Path) -> None:
    host, _, path = reference.partition("/")
    repository = path.split("@")[0].rsplit(":", 1)[0]
    url = f"http://{host}/v2/{repository}/blobs/{digest}"
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=30) as blob:
        subprocess.run(
            ["tar", "-xzpf", "-", "--numeric-owner", "-C", str(partial)],
            input=blob.read(),
            check=True,
        )
    partial.rename(target)


def _serve_with_extracting_layers(argv: Sequence[str]) -> int:
    from stargz.snapshotter import daemon

    parser = daemon.build_parser()
    parser.add_argument("--layers", type=Path, required=True)
    args = parser.parse_args(argv)
    config = daemon.config_from_args(args)
    logging.basicConfig(level=config.log_level.upper())
    daemon.run(config, ExtractingLayers(args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_with_extracting_layers(sys.argv[1:]))
