"""contrib/kubernetes holds together: each config loads with the one loader, and the paths the
manifest, the snapshotter and containerd name are the same ones."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from stargz.config import file_config_from_dict, load_file_config
from stargz.cri.proxy import settings_from_config

KUBE = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes"


def _containerd() -> dict[str, Any]:
    return tomllib.loads((KUBE / "containerd-config.toml").read_text())


def _manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((KUBE / "daemonset.yaml").read_text())}


def test_the_node_configs_agree() -> None:
    containerd = _containerd()
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert (cri["snapshotter"], cri["disable_snapshot_annotations"]) == ("stargz", False)
    config = load_file_config(KUBE / "config.toml")
    proxy = containerd["proxy_plugins"]["stargz"]
    assert (proxy["type"], proxy["address"]) == ("snapshot", config.snapshotter.address)
    cri_keychain = settings_from_config(config, "config.toml")
    assert cri_keychain is not None
    assert str(cri_keychain.image_service_path) == "/run/containerd/containerd.sock"
    readme = (KUBE / "README.md").read_text()
    assert f"--image-service-endpoint=unix://{config.snapshotter.address}" in readme


def test_the_daemonset_matches_its_config_and_containerd() -> None:
    docs = _manifests()
    config_toml = docs["ConfigMap"]["data"]["config.toml"]
    config = file_config_from_dict(tomllib.loads(config_toml), "daemonset.yaml")
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == docs["RuntimeClass"]["metadata"]["name"]
    handler = docs["RuntimeClass"]["handler"]
    assert f'containerd.runtimes.{handler}]' in (KUBE / "containerd-config.toml").read_text()
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = Path(container["command"][container["command"].index("--config") + 1])
    assert volumes[mounts[str(config_path.parent)]["name"]]["configMap"]["name"] == \
        docs["ConfigMap"]["metadata"]["name"]
    socket_dir = str(Path(config.snapshotter.address).parent)
    assert socket_dir == str(Path(_containerd()["proxy_plugins"]["stargz"]["address"]).parent)
    assert volumes[mounts[socket_dir]["name"]]["hostPath"]["path"] == socket_dir
    root = mounts[config.snapshotter.root]
    assert root["mountPropagation"] == "Bidirectional"  # the FUSE mount reaches containerd
    assert volumes[root["name"]]["hostPath"]["path"] == config.snapshotter.root
    assert container["securityContext"]["privileged"] is True and "/dev/fuse" in mounts
