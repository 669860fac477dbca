"""OCI image layouts on disk, manifests and platform matching."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from stargz.errors import NotFoundError, RangeError, RegistryError, VerificationError
from stargz.registry import OCILayout, Platform, Reference, RegistryClient
from stargz.registry.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    make_manifest,
    sha256_digest,
)


def image_manifest(config: str, layers: list[str]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d,
                    "size": 1, "annotations": {"a": "b"}} for d in layers]}).encode()


def test_layout_roundtrip(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "img")
    config = layout.write_blob(b"{}")
    layer = layout.write_blob(b"layer-bytes")
    assert layout.read_blob(layer) == b"layer-bytes"
    raw = image_manifest(config, [layer])
    descriptor = layout.put_manifest(raw, OCI_MANIFEST, tag="v1")
    assert descriptor.digest == sha256_digest(raw)
    reopened = OCILayout(tmp_path / "img")
    manifest = reopened.get_manifest("v1")
    assert manifest.raw == raw and manifest.digest == descriptor.digest
    assert manifest.config().digest == config
    assert [d.digest for d in manifest.layers()] == [layer]
    assert manifest.layers()[0].annotations == {"a": "b"}
    assert reopened.get_manifest().digest == descriptor.digest  # the only image
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert json.loads((tmp_path / "img" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"}


def test_retag_replaces_and_missing_tag(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    first = layout.put_manifest(image_manifest(layout.write_blob(b"1"), []), OCI_MANIFEST, "t")
    second = layout.put_manifest(image_manifest(layout.write_blob(b"2"), []), OCI_MANIFEST, "t")
    assert [d.digest for d in layout.index()] == [second.digest]
    assert first.digest != second.digest
    with pytest.raises(NotFoundError, match="has: t"):
        layout.resolve("other")


def test_index_with_platforms(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    amd = layout.put_manifest(image_manifest(layout.write_blob(b"a"), []), OCI_MANIFEST)
    arm = layout.put_manifest(image_manifest(layout.write_blob(b"r"), []), OCI_MANIFEST)
    entries = [Descriptor(OCI_MANIFEST, amd.digest, amd.size, platform=Platform("linux", "amd64")),
               Descriptor(OCI_MANIFEST, arm.digest, arm.size,
                          platform=Platform("linux", "arm64", "v8"))]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [e.to_dict() for e in entries]}).encode()
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    layout.put_manifest(index, OCI_INDEX, "multi")
    assert layout.get_manifest("multi", Platform("linux", "amd64")).digest == amd.digest
    assert layout.get_manifest("multi", Platform.parse("linux/arm64")).digest == arm.digest
    with pytest.raises(NotFoundError):
        layout.get_manifest("multi", Platform("windows", "amd64"))


def test_corrupt_and_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        OCILayout(tmp_path / "nothing")
    layout = OCILayout.create(tmp_path)
    digest = layout.write_blob(b"good")
    layout.blob_path(digest).write_bytes(b"evil")
    with pytest.raises(VerificationError):
        layout.read_blob(digest)
    with pytest.raises(NotFoundError):
        layout.read_blob(sha256_digest(b"absent"))
    with pytest.raises(VerificationError):
        layout.write_blob_from(iter([b"a", b"b"]), sha256_digest(b"abc"))
    assert not layout.has_blob(sha256_digest(b"abc"))
    layout.write_blob_from(iter([b"a", b"bc"]), sha256_digest(b"abc"))
    assert layout.read_blob(sha256_digest(b"abc")) == b"abc"
    assert sorted(p.name for p in layout.blob_path(digest).parent.iterdir()) == sorted(
        [digest.split(":")[1], sha256_digest(b"abc").split(":")[1]])  # no temp files left


def test_platform_matching() -> None:
    assert Platform.parse("linux/arm64/v8").matches(Platform("linux", "arm64"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "v6"))
    assert str(Platform.host()).startswith("linux/")


def test_media_type_sniffing() -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    assert make_manifest(raw, "application/json", None).media_type == DOCKER_MANIFEST
    with pytest.raises(RegistryError, match="schema 1"):
        make_manifest(b'{"schemaVersion": 1}', "application/json", None)
    with pytest.raises(RegistryError):
        make_manifest(b"\x00binary", "application/octet-stream", None)
    with pytest.raises(RegistryError, match="larger than"):
        make_manifest(b" " * (5 << 20), OCI_MANIFEST, None)


def test_client_serves_oci_layout_references(tmp_path: Path) -> None:
    blob_file = tmp_path / "layer.bin"
    blob_file.write_bytes(bytes(range(256)) * 10)
    ref = Reference.parse(f"oci:{tmp_path / 'out'}:v1")

    async def body() -> None:
        async with RegistryClient() as client:
            layer = await client.push_blob(ref, blob_file)
            config = await client.push_blob(ref, b"{}", digest=sha256_digest(b"{}"))
            raw = image_manifest(config, [layer])
            digest = await client.put_manifest(ref, raw, OCI_MANIFEST)
            manifest = await client.get_manifest(ref)
            assert (manifest.raw, manifest.digest) == (raw, digest)
            assert (await client.fetch_manifest(ref.with_digest(digest))).raw == raw
            assert await client.head_blob(ref, layer) == 2560
            assert await client.get_blob(ref, layer) == blob_file.read_bytes()
            assert await client.read_blob_range(ref, layer, 10, 20) == bytes(range(10, 20))
            assert await client.read_blob_ranges(ref, layer, [(0, 2), (2558, 2560)]) == [
                b"\x00\x01", b"\xfe\xff"]
            assert await client.mount_blob(ref, layer, "ignored")
            assert not await client.blob_exists(ref, sha256_digest(b"absent"))
            with pytest.raises(RangeError):
                await client.read_blob_range(ref, layer, 2500, 2600)
            with pytest.raises(NotFoundError):
                await client.get_manifest(ref.with_tag("v2"))

    asyncio.run(body())
