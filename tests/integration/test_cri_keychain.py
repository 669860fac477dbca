"""The CRI keychain against containerd 1.6's real CRI plugin: a small CRI client plays kubelet
(``--image-service-endpoint`` = the snapshotter's socket), pulls an eStargz image from a
registry with basic auth, and runs it in a host-network pod. The layers are lazy (the registry
served a small part of the blobs), with the credentials kubelet sent; wrong ones fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from stargz.cri.api import runtime_v1_pb2 as cri
from tests.integration.test_rpull_containerd import (
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    _layer2_tar,
    build_estargz_layout,
)
from tests.support.containerd import SnapshotterProcess
from tests.support.cri import SANDBOX_IMAGE, CriContainerd, Kubelet, log_messages
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, blob_bytes_served, free_port, run_registry

pytestmark = pytest.mark.integration

@pytest.fixture(name="registry")
def registry_fixture(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "registry", auth="basic") as registry:
        yield registry


def _push_private(registry: RunningRegistry, work: Path) -> str:
    source = build_estargz_layout(work / "oci", [busybox_rootfs_tar(), _layer2_tar(big=True)],
                                  "v1")
    return _push(registry, source, "private/estargz:v1")


def _push(registry: RunningRegistry, source: str, name: str) -> str:
    ref = f"{registry.host}/{name}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
                    f"{registry.username}:{registry.password}", source, f"docker://{ref}"],
                   check=True)
    return ref


def _status(snap: SnapshotterProcess) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "stargz.cli.main", "status", "--root",
                          str(snap.root), "--json"], check=True, capture_output=True, text=True)
    rows: list[dict[str, object]] = json.loads(out.stdout)
    return rows


@pytest.fixture(name="kubelet")
def kubelet_fixture(tmp_path: Path, registry: RunningRegistry
                    ) -> Iterator[tuple[Kubelet, SnapshotterProcess]]:
    ctd_dir = tmp_path / "containerd"
    config = tmp_path / "snapshotter.toml"
    # no background fetch: what the registry serves is then only what the pull and run needed
    config.write_text(f'metrics_address = "127.0.0.1:{free_port()}"\n'
                      f'[lazy]\nno_background_fetch = true\n\n[cri_keychain]\n'
                      f'enable_keychain = true\nimage_service_path = "{ctd_dir}/containerd.sock"\n')
    snap = SnapshotterProcess(tmp_path / "stargz.sock", tmp_path / "snap-root",
                              tmp_path / "snap.log", extra_args=["--config", str(config)])
    snap.start()
    ctd = CriContainerd(ctd_dir, snap.address, registry.hosts_dir())
    kubelet: Kubelet | None = None
    try:
        ctd.start()
        ctd.import_sandbox_image(tmp_path)
        kubelet = Kubelet(snap.address, ctd.address, tmp_path / "pods")
        yield kubelet, snap
    finally:
        if kubelet is not None:
            kubelet.close()
        ctd.stop()
        snap.stop()


def test_private_image_is_pulled_lazily_with_kubelets_credentials(
        kubelet: tuple[Kubelet, SnapshotterProcess], registry: RunningRegistry,
        tmp_path: Path) -> None:
    client, snap = kubelet
    image = _push_private(registry, tmp_path)
    before = blob_bytes_served(registry)
    assert registry.username is not None and registry.password is not None

    with pytest.raises(grpc.RpcError) as failed:
        client.pull(image, registry.username, "wrong-password")
    print(f"wrong credentials: {failed.value.code()} {failed.value.details()}")
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert "401 Unauthorized" in (failed.value.details() or "")
    assert "wrong-password" not in (failed.value.details() or "")

    image_ref = client.pull(image, registry.username, registry.password)
    assert image_ref.startswith("sha256:")
    after_pull = blob_bytes_served(registry) - before
    code, log = client.run_to_exit("lazy", image, *WORKLOAD)
    fetched = blob_bytes_served(registry) - before
    print(f"CRI pull: {after_pull} blob bytes at pull, {fetched} after the run "
          f"(the image holds a {BIG_SIZE}-byte file the run never reads)")
    assert code == 0, log
    assert log_messages(log) == MOTD + LAYER2_TEXT
    assert fetched < BIG_SIZE // 4  # lazy: not a fallback to a full download
    snap_log = snap.log_text()
    assert snap_log.count("mounted lazily") == 2, snap_log[-3000:]
    assert "CRI keychain: credentials of user" in snap_log
    assert registry.password not in snap_log and "wrong-password" not in snap_log

    lazy = [row for row in _status(snap) if row["mode"] == "lazy"]
    print("stargz status:", json.dumps(lazy))
    assert sorted(str(row["layer"]) for row in lazy) == sorted(_layer_digests(image, registry))
    assert all(row["image"] == image and row["reason"] == "" for row in lazy)
    fetched = sum(int(str(row["fetched_bytes"])) for row in lazy)
    assert 0 < fetched <= blob_bytes_served(registry) - before
    assert all(row["prefetch_done"] is True for row in lazy)


def _layer_digests(image: str, registry: RunningRegistry) -> list[str]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                          f"{registry.username}:{registry.password}", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout
    return [str(layer["digest"]) for layer in json.loads(out)["layers"]]


def _metrics_address(snap: SnapshotterProcess) -> str:
    config = Path(snap.extra_args[snap.extra_args.index("--config") + 1]).read_text()
    return config.split('"', 2)[1]


def test_without_the_keychain_a_private_image_falls_back_and_says_auth(
        kubelet: tuple[Kubelet, SnapshotterProcess], registry: RunningRegistry,
        tmp_path: Path) -> None:
    """kubelet talking to containerd directly (no --image-service-endpoint): containerd pulls
    with the credentials, the snapshotter has none. The reference's silent fallback, said."""
    _client, snap = kubelet
    assert registry.username is not None and registry.password is not None
    image = _push_private(registry, tmp_path)
    direct = Kubelet(snap.address.parent / "containerd" / "containerd.sock", snap.address,
                     tmp_path / "pods")
    try:
        direct.pull(image, registry.username, registry.password)
    finally:
        direct.close()
    rows = [row for row in _status(snap) if row["image"] == image]
    assert [(row["mode"], row["reason"]) for row in rows] == [("full", "auth")] * 2
    warnings = [line for line in snap.log_text().splitlines() if "not lazily (auth)" in line]
    assert len(warnings) == 2 and all("WARNING" in line for line in warnings)
    assert registry.password not in snap.log_text()


def test_other_calls_are_forwarded_or_refused(
        kubelet: tuple[Kubelet, SnapshotterProcess]) -> None:
    """v1alpha2 goes through as v1 does; the RuntimeService is not ours to serve."""
    client, snap = kubelet
    with grpc.insecure_channel(f"unix://{snap.address}") as channel:
        list_v1alpha2 = channel.unary_unary(
            "/runtime.v1alpha2.ImageService/ListImages",
            request_serializer=cri.ListImagesRequest.SerializeToString,
            response_deserializer=cri.ListImagesResponse.FromString)
        images = list_v1alpha2(cri.ListImagesRequest(), timeout=30).images
        assert any(SANDBOX_IMAGE in image.repo_tags for image in images)
        status = client.images.ImageStatus(cri.ImageStatusRequest(
            image=cri.ImageSpec(image=SANDBOX_IMAGE)), timeout=30)
        assert SANDBOX_IMAGE in status.image.repo_tags
        version = channel.unary_unary("/runtime.v1.RuntimeService/Version",
                                      request_serializer=cri.VersionRequest.SerializeToString,
                                      response_deserializer=cri.VersionResponse.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            version(cri.VersionRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_layer_that_is_not_estargz_falls_back_and_says_why(
        kubelet: tuple[Kubelet, SnapshotterProcess], registry: RunningRegistry,
        tmp_path: Path) -> None:
    client, snap = kubelet
    assert registry.username is not None and registry.password is not None
    lazy_image = _push_private(registry, tmp_path)  # mounts the FUSE fs, which serves metrics
    client.pull(lazy_image, registry.username, registry.password)
    rootfs = tmp_path / "plain-rootfs"
    extract_tar(busybox_rootfs_tar(), rootfs)
    (rootfs / "etc" / "plain").write_text("a gzip layer, not eStargz\n")  # not the pause layer
    plain = _push(registry, make_oci_image(rootfs, tmp_path / "plain-oci"), "private/plain:v1")
    client.pull(plain, registry.username, registry.password)
    client.pull(plain, registry.username, registry.password)  # present: no second Prepare
    code, log = client.run_to_exit("plain", plain, "cat", "/etc/motd")
    assert (code, log_messages(log)) == (0, MOTD)

    warnings = [line for line in snap.log_text().splitlines()
                if "downloaded in full, not lazily (no_toc_digest)" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and plain in warnings[0]
    full = [row for row in _status(snap) if row["image"] == plain]
    assert [(row["mode"], row["reason"]) for row in full] == [("full", "no_toc_digest")]
    assert full[0]["layer"] == _layer_digests(plain, registry)[0]
    with urllib.request.urlopen(f"http://{_metrics_address(snap)}/metrics") as response:
        metrics = response.read().decode()
    assert 'stargz_layer_fallbacks_total{reason="no_toc_digest"} 1.0' in metrics
    table = subprocess.run([sys.executable, "-m", "stargz.cli.main", "status", "--root",
                            str(snap.root)], check=True, capture_output=True, text=True).stdout
    print(table)
    assert table.splitlines()[0].split() == ["SNAPSHOT", "KIND", "MODE", "LAYER", "FETCHED",
                                             "PREFETCH", "IMAGE", "REASON"]
    assert sum(" lazy " in line for line in table.splitlines()) == 2
    assert any(" full " in line and "no_toc_digest" in line for line in table.splitlines())
