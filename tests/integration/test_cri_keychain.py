"""The CRI keychain against containerd 1.6's real CRI plugin: a small CRI client plays kubelet
(``--image-service-endpoint`` = the snapshotter's socket), pulls an eStargz image from a
registry with basic auth, and runs it in a host-network pod. The layers are lazy (the registry
served a small part of the blobs), with the credentials kubelet sent; wrong ones fail clearly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.test_rpull_containerd import (
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    _layer2_tar,
    build_estargz_layout,
)
from tests.support.containerd import SnapshotterProcess
from tests.support.cri import CriContainerd, Kubelet, log_messages
from tests.support.images import busybox_rootfs_tar
from tests.support.registry import RunningRegistry, blob_bytes_served, run_registry

pytestmark = pytest.mark.integration

for tool in ("containerd", "runc", "skopeo", "umoci", "htpasswd"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed", allow_module_level=True)


@pytest.fixture(name="registry")
def registry_fixture(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "registry", auth="basic") as registry:
        yield registry


def _push_private(registry: RunningRegistry, work: Path) -> str:
    source = build_estargz_layout(work / "oci", [busybox_rootfs_tar(), _layer2_tar(big=True)],
                                  "v1")
    ref = f"{registry.host}/private/estargz:v1"
    import subprocess

    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
                    f"{registry.username}:{registry.password}", source, f"docker://{ref}"],
                   check=True)
    return ref


@pytest.fixture(name="kubelet")
def kubelet_fixture(tmp_path: Path, registry: RunningRegistry
                    ) -> Iterator[tuple[Kubelet, SnapshotterProcess]]:
    ctd_dir = tmp_path / "containerd"
    config = tmp_path / "snapshotter.toml"
    # no background fetch: what the registry serves is then only what the pull and run needed
    config.write_text(f'[lazy]\nno_background_fetch = true\n\n[cri_keychain]\n'
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
