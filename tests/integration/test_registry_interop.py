"""Interop with skopeo: an OCI layout we write is one skopeo can push, and what skopeo pushes
to the real registry (and writes as a layout) we read back byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.registry import HostsConfig, Reference, RegistryClient
from stargz.registry.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256_digest
from tests.support import registry as support

pytestmark = pytest.mark.integration


def layer_tar_gz() -> tuple[bytes, str]:
    """A small gzip layer and its diff ID."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"hello from stargz\n" * 100
        info = tarfile.TarInfo("etc/motd")
        info.size, info.mtime = len(data), 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), sha256_digest(raw.getvalue())


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    with support.run_registry(tmp_path_factory.mktemp("interop")) as running:
        yield running


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, capture_output=True,
                   timeout=60)


def test_our_layout_through_skopeo_and_back(upstream: support.RunningRegistry,
                                            tmp_path: Path) -> None:
    layer, diff_id = layer_tar_gz()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "config": {}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer),
                    "size": len(layer)}]}).encode()
    ours = Reference.parse(f"oci:{tmp_path / 'ours'}:v1")
    remote = Reference.parse(f"{upstream.host}/interop/app:v1")
    hosts = HostsConfig.create(insecure_hosts=[upstream.host])

    async def write_layout() -> str:
        async with RegistryClient() as client:
            await client.push_blob(ours, layer)
            await client.push_blob(ours, config)
            return await client.put_manifest(ours, manifest, OCI_MANIFEST)

    digest = asyncio.run(write_layout())
    skopeo("copy", "--dest-tls-verify=false", str(ours), f"docker://{remote}")
    skopeo("copy", "--src-tls-verify=false", f"docker://{remote}",
           f"oci:{tmp_path / 'theirs'}:v1")

    async def read_back() -> None:
        async with RegistryClient(hosts) as client:
            pulled = await client.get_manifest(remote)
            assert (pulled.raw, pulled.digest) == (manifest, digest)
            assert await client.get_blob(remote, sha256_digest(layer)) == layer
            theirs = Reference.parse(f"oci:{tmp_path / 'theirs'}:v1")
            copied = await client.get_manifest(theirs)
            assert copied.digest == digest
            assert await client.get_blob(theirs, sha256_digest(config)) == config

    asyncio.run(read_back())
