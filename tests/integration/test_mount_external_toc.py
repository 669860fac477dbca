"""Layers whose TOC is kept in a TOC image, mounted lazily by `stargz mount` (the layer service
the snapshotter shares): ours, and the Go reference's eStargz reshaped into the external-TOC
form (its data members and its TOC member, byte for byte, as the reference's
--estargz-external-toc lays them out; Debian's ctr-remote 0.12 can not write that form)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from stargz.estargz.footer import ESTARGZ_FOOTER_SIZE, external_toc_footer, parse_footer
from tests.integration.test_convert import MOTD, TOC_DIGEST, blob_of, manifest_of, push, stargz
from tests.integration.test_convert_ctr_remote_flags import (  # noqa: F401 (fixtures by name)
    LAYER_DIGEST,
    ctd_fixture,
    registry_fixture,
    source_ref_fixture,
)
from tests.integration.test_mount_image import Mounts, mounts_fixture  # noqa: F401
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_our_external_toc_image_mounts_lazily(registry: RunningRegistry, source_ref: str,
                                              mounts: Mounts, tmp_path: Path) -> None:
    image = f"{registry.host}/test/busybox:ext-mount"
    stargz("convert", "--plain-http", "--oci", "--estargz-external-toc", source_ref, image)
    done = mounts.mount(image, tmp_path / "mnt")
    assert "downloading it in full" not in done.stderr  # opened lazily, through its TOC image
    assert (tmp_path / "mnt/etc/motd").read_bytes() == MOTD
    mounts.umount(tmp_path / "mnt")


def test_without_its_toc_image_the_mount_says_so(registry: RunningRegistry, source_ref: str,
                                                  mounts: Mounts, tmp_path: Path) -> None:
    image = f"{registry.host}/test/busybox:ext-alone"
    stargz("convert", "--plain-http", "--oci", "--estargz-external-toc", source_ref, image)
    # the same image under another tag: <tag>-esgztoc does not exist for it
    manifest = manifest_of(registry.host, "test/busybox", "ext-alone")
    orphan = tmp_path / "orphan"
    write_layout(orphan, {"orphan": manifest}, registry.host, "test/busybox")
    push(f"oci:{orphan}:orphan", f"{registry.host}/test/busybox:orphan")
    done = mounts.mount(f"{registry.host}/test/busybox:orphan", tmp_path / "mnt", check=False)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("stargz: error:") and "orphan-esgztoc" in line, line


def test_go_written_estargz_as_external_toc_mounts_lazily(
    registry: RunningRegistry, source_ref: str, mounts: Mounts, tmp_path: Path, ctd: Any
) -> None:
    host = registry.host
    go_image = f"{host}/test/busybox:go-esgz"
    ctd.ctr("images", "pull", "--plain-http", source_ref)
    ctd.ctr("images", "convert", "--oci", "--estargz", source_ref, go_image, tool="ctr-remote")
    ctd.ctr("images", "push", "--plain-http", go_image)
    manifest = manifest_of(host, "test/busybox", "go-esgz")
    config = json.loads(blob_of(host, "test/busybox", manifest["config"]["digest"]))
    layout = tmp_path / "layout"
    layers, tocs, diff_ids = [], [], []
    for layer in manifest["layers"]:
        blob = blob_of(host, "test/busybox", layer["digest"])
        toc_at = parse_footer(blob[-ESTARGZ_FOOTER_SIZE:]).toc_offset
        reshaped = blob[:toc_at] + external_toc_footer()  # data members as Go wrote them
        toc_blob = blob[toc_at:-ESTARGZ_FOOTER_SIZE]  # Go's TOC member: the TOC image's layer
        layers.append({"mediaType": OCI_LAYER_GZIP, **put_blob(layout, reshaped),
                       "annotations": {TOC_DIGEST: layer["annotations"][TOC_DIGEST]}})
        tocs.append({"mediaType": OCI_LAYER_GZIP, **put_blob(layout, toc_blob),
                     "annotations": {LAYER_DIGEST: layers[-1]["digest"]}})
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(reshaped)).hexdigest())
    config["rootfs"]["diff_ids"] = diff_ids
    images = {
        "go-ext": image_doc(layout, json.dumps(config).encode(), layers),
        "go-ext-esgztoc": image_doc(layout, b"{}", sorted(tocs, key=lambda d: d["digest"])),
    }
    write_layout(layout, images)
    for tag in images:
        push(f"oci:{layout}:{tag}", f"{host}/test/busybox:{tag}")
    done = mounts.mount(f"{host}/test/busybox:go-ext", tmp_path / "mnt")
    assert "downloading it in full" not in done.stderr
    assert (tmp_path / "mnt/etc/motd").read_bytes() == MOTD
    mounts.umount(tmp_path / "mnt")


def put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs/sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def image_doc(layout: Path, config: bytes, layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **put_blob(layout, config)}, "layers": layers}


def write_layout(layout: Path, images: dict[str, dict[str, Any]], host: str = "",
                 repo: str = "") -> None:
    """An OCI layout holding ``images`` by tag (blobs of a registry image fetched from it)."""
    entries = []
    for tag, doc in images.items():
        if host:  # copy the registry image's blobs
            for desc in [doc["config"], *doc["layers"]]:
                put_blob(layout, blob_of(host, repo, desc["digest"]))
        raw = json.dumps(doc).encode()
        entries.append({"mediaType": OCI_MANIFEST, **put_blob(layout, raw),
                        "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def test_snapshotter_pulls_external_toc_layers_lazily(registry: RunningRegistry,
                                                      source_ref: str, tmp_path: Path) -> None:
    from tests.integration.test_rpull_containerd import running_stack

    image = f"{registry.host}/test/busybox:ext-rpull"
    stargz("convert", "--plain-http", "--oci", "--estargz-external-toc", source_ref, image)
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{registry.host}"]\n')
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        result = stack.rpull(image)
        assert "1 lazy, 0 downloaded" in result.stdout, stack.snapshotter.log_text()[-3000:]
        assert stack.run(image, "t-ext", "cat", "/etc/motd").encode() == MOTD
