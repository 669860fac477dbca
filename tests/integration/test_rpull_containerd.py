"""`stargz rpull` against real containerd 1.6, a real docker-registry and our snapshotter.

Two snapshotter set-ups: the daemon as shipped with no lazy store (every layer takes the
fallback: download, diff-apply, commit) and the daemon with ``ExtractingLayers`` (the stand-in
remote hook in tests/support/containerd.py), so the remote handshake (Prepare answered with
ALREADY_EXISTS) runs for real on containerd's side.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from stargz.estargz.writer import BuildOptions, build
from stargz.snapshotter.remote import LABEL_TOC_DIGEST
from tests.support.containerd import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    MOTD,
    REPO,
    Containerd,
    SnapshotterProcess,
    image_fixture,
    registry_fixture,
)
from tests.support.images import busybox_rootfs_tar

pytestmark = pytest.mark.integration

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
BIG_FILE = "srv/unused.bin"  # in the eStargz image's top layer; workloads never read it
BIG_SIZE = 12 << 20
RPULL = ["-m", "stargz.cli.main", "rpull"]
WORKLOAD = ("cat", "/etc/motd", "/etc/layer2")


class Stack:
    """Our snapshotter (optionally with the extracting remote hook) and containerd using it."""

    def __init__(self, work: Path, extracting: bool, extra_args: Sequence[str] = ()) -> None:
        self.work = work
        extra = list(extra_args)
        module = "stargz.snapshotter.daemon"
        if extracting:
            module, extra = "tests.support.containerd", [*extra, "--layers", str(work / "layers")]
        self.snapshotter = SnapshotterProcess(
            work / "stargz.sock", work / "snap-root", work / "snap.log", module, extra)
        self.containerd = Containerd(work / "containerd", self.snapshotter.address)

    def rpull(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, *RPULL, "--plain-http",
                   "--address", str(self.containerd.address), *args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"stargz rpull exited {result.returncode}:\n{result.stderr}\n"
                                 f"snapshotter log:\n{self.snapshotter.log_text()[-4000:]}")
        return result

    def run(self, image: str, name: str, *command: str) -> str:
        return self.containerd.ctr("run", "--rm", "--snapshotter", "stargz", image, name,
                                   *command).stdout

    def remote_prepares(self) -> list[dict[str, str]]:
        calls = self.work / "layers" / "calls.jsonl"
        if not calls.exists():
            return []
        return [c for c in map(json.loads, calls.read_text().splitlines())
                if c["call"] == "prepare"]

    def content_digests(self) -> set[str]:
        out = self.containerd.ctr("content", "ls", "-q").stdout
        return set(out.split())

    def content_labels(self, digest: str) -> str:
        for line in self.containerd.ctr("content", "ls").stdout.splitlines():
            if line.startswith(digest):
                return line
        raise AssertionError(f"{digest} not in the content store")


@contextlib.contextmanager
def running_stack(work: Path, extracting: bool, extra_args: Sequence[str] = ()
                  ) -> Iterator[Stack]:
    stack = Stack(work, extracting, extra_args)
    stack.snapshotter.start()  # before containerd (its backoff on a late proxy socket)
    try:
        stack.containerd.start()
        yield stack
    finally:
        stack.containerd.stop()
        stack.snapshotter.stop()


@pytest.fixture(name="plain_stack")
def plain_stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    """Our snapshotter with lazy layers switched off: every layer is downloaded."""
    config = tmp_path / "snapshotter.toml"
    config.write_text("[lazy]\nenabled = false\n")
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


@pytest.fixture(name="remote_stack")
def remote_stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, extracting=True) as stack:
        yield stack


# -- an eStargz image built with our writer --------------------------------------------------


def _layer2_tar(big: bool) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("etc", "srv"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        files = [("etc/layer2", LAYER2_TEXT.encode())]
        if big:
            files.append((BIG_FILE, _noise(BIG_SIZE)))
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _noise(size: int) -> bytes:
    """Incompressible bytes, so the blob is as big as the file (a lazy pull must skip them)."""
    seed = hashlib.sha256(b"stargz rpull test").digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
                    for i in range(size // 32 + 1))[:size]


def _put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def build_estargz_layout(layout: Path, tars: Sequence[Path | bytes], tag: str,
                         wrong_toc: bool = False, as_index: bool = False) -> str:
    """An OCI layout whose layers are eStargz blobs built by our writer; returns oci:DIR:TAG.
    ``wrong_toc`` puts a TOC digest in each layer's annotations that is not its TOC's;
    ``as_index`` tags an image index (an arm64 entry first, then amd64) instead."""
    layers: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for tar in tars:
        src = io.BytesIO(tar) if isinstance(tar, bytes) else tar.open("rb")
        blob = io.BytesIO()
        with contextlib.closing(src):
            result = build(src, blob, BuildOptions(chunk_size=1 << 20, level=6))
        digest = _put_blob(layout, blob.getvalue())
        assert digest == result.blob_digest
        annotations = result.annotations()
        if wrong_toc:
            annotations[LABEL_TOC_DIGEST] = "sha256:" + hashlib.sha256(digest.encode()).hexdigest()
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest,
                       "size": result.blob_size, "annotations": annotations})
        diff_ids.append(result.diff_id)
    manifests = {arch: _put_image_manifest(layout, arch, layers, diff_ids)
                 for arch in ("arm64", "amd64")}
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifests["amd64"]}
    if as_index:  # an image index with another platform first, then ours
        entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifests[arch],
                    "platform": {"architecture": arch, "os": "linux"}}
                   for arch in ("arm64", "amd64")]
        nested = json.dumps({"schemaVersion": 2, "manifests": entries,
                             "mediaType": "application/vnd.oci.image.index.v1+json"}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json",
               "digest": _put_blob(layout, nested), "size": len(nested)}
    index = {"schemaVersion": 2,
             "manifests": [{**top, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return f"oci:{layout}:{tag}"


def _put_image_manifest(layout: Path, arch: str, layers: list[dict[str, Any]],
                        diff_ids: list[str]) -> dict[str, Any]:
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _put_blob(layout, config), "size": len(config)},
        "layers": layers,
    }).encode()
    return {"digest": _put_blob(layout, manifest), "size": len(manifest)}


def push(source: str, registry: str, name: str) -> str:
    ref = f"{registry}/{name}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source,
                    f"docker://{ref}"], check=True)
    return ref


@pytest.fixture(scope="module", name="estargz_image")
def estargz_image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two eStargz layers: the busybox rootfs, then /etc/layer2 plus a big unused file."""
    layout = tmp_path_factory.mktemp("estargz") / "oci"
    source = build_estargz_layout(layout, [busybox_rootfs_tar(), _layer2_tar(big=True)], "v1")
    return push(source, registry, "test/estargz:v1")


def _manifest(ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True, text=True).stdout
    manifest: dict[str, Any] = json.loads(out)
    return manifest


def _layer_digests(ref: str) -> list[str]:
    return [str(layer["digest"]) for layer in _manifest(ref)["layers"]]


# -- tests -----------------------------------------------------------------------------------


def test_gzip_image_falls_back_and_runs(plain_stack: Stack, image: str) -> None:
    result = plain_stack.rpull(image)
    assert "0 lazy, 2 downloaded" in result.stdout
    assert plain_stack.run(image, "t-gzip", *WORKLOAD) == MOTD + LAYER2_TEXT
    # the downloaded layers are in the content store, like after `ctr images pull`
    layers = _layer_digests(image)
    assert set(layers) <= plain_stack.content_digests()


def test_estargz_image_without_lazy_store_falls_back(plain_stack: Stack,
                                                    estargz_image: str) -> None:
    assert "0 lazy, 2 downloaded" in plain_stack.rpull(estargz_image).stdout
    assert plain_stack.run(estargz_image, "t-fallback", *WORKLOAD) == MOTD + LAYER2_TEXT


def test_estargz_layers_are_mounted_remotely(remote_stack: Stack, estargz_image: str) -> None:
    result = remote_stack.rpull(estargz_image)
    assert "2 lazy, 0 downloaded" in result.stdout
    layers = _layer_digests(estargz_image)
    assert [c["digest"] for c in remote_stack.remote_prepares()] == layers
    # nothing of the layers went through containerd's content store
    assert not set(layers) & remote_stack.content_digests()
    assert remote_stack.run(estargz_image, "t-remote", *WORKLOAD) == MOTD + LAYER2_TEXT


def test_rpull_again_finds_the_layers_present(remote_stack: Stack, estargz_image: str) -> None:
    remote_stack.rpull(estargz_image)
    again = remote_stack.rpull(estargz_image)
    assert "0 lazy, 0 downloaded, 2 already present" in again.stdout
    assert len(remote_stack.remote_prepares()) == 2


def test_image_record_and_gc_labels(remote_stack: Stack, estargz_image: str) -> None:
    remote_stack.rpull(estargz_image)
    images = remote_stack.containerd.ctr("images", "ls", "-q").stdout.split()
    assert images == [estargz_image]
    config = _manifest(estargz_image)["config"]["digest"]
    snapshots = remote_stack.containerd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout
    top = next(line.split()[0] for line in snapshots.splitlines()[1:] if len(line.split()) == 3)
    assert f"containerd.io/gc.ref.snapshot.stargz={top}" in remote_stack.content_labels(config)
    # containerd's garbage collector keeps everything once our lease is gone
    remote_stack.containerd.ctr("content", "prune", "references", check=False)
    assert config in remote_stack.content_digests()
    assert remote_stack.run(estargz_image, "t-gc", "cat", "/etc/layer2") == LAYER2_TEXT


def test_ctr_remote_rpull_works_with_our_snapshotter(remote_stack: Stack,
                                                    estargz_image: str) -> None:
    remote_stack.containerd.ctr("images", "rpull", "--plain-http", estargz_image,
                                tool="ctr-remote")
    assert len(remote_stack.remote_prepares()) == 2
    assert remote_stack.run(estargz_image, "t-ctr-remote", *WORKLOAD) == MOTD + LAYER2_TEXT


def test_index_resolves_to_linux_amd64(remote_stack: Stack, registry: str,
                                       tmp_path: Path) -> None:
    source = build_estargz_layout(tmp_path / "oci", [busybox_rootfs_tar(), _layer2_tar(False)],
                                  "v1", as_index=True)
    image = f"{registry}/test/index:v1"
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", source,
                    f"docker://{image}"], check=True)
    index = _manifest(image)
    amd64 = index["manifests"][1]["digest"]
    result = remote_stack.rpull(image)
    assert f": {amd64}" in result.stdout and "2 lazy" in result.stdout
    # the image record points at the index, which keeps the chosen manifest alive
    assert index_digest(image) in remote_stack.containerd.ctr("images", "ls").stdout
    labels = remote_stack.content_labels(index_digest(image))
    assert f"containerd.io/gc.ref.content.m.1={amd64}" in labels
    assert remote_stack.run(image, "t-index", *WORKLOAD) == MOTD + LAYER2_TEXT


def index_digest(ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def test_missing_image_is_one_error_line(plain_stack: Stack, registry: str) -> None:
    result = plain_stack.rpull(f"{registry}/test/nothing-here:v1", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("stargz: error:")


def test_unreachable_containerd_is_one_error_line(tmp_path: Path, image: str) -> None:
    command = [sys.executable, *RPULL, "--plain-http",
               "--address", str(tmp_path / "nothing.sock"), image]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "not reachable" in result.stderr and result.stderr.count("\n") == 1
