"""Lazy pulls when things go wrong: a tampered layer in the registry's storage, and a registry
that wants credentials (found in the Docker config, as a user's would be)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from tests.integration.test_rpull_containerd import (
    BIG_FILE,
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    _layer2_tar,
    build_estargz_layout,
    running_stack,
)
from tests.support.images import busybox_rootfs_tar
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration


def _layout(tmp_path: Path) -> tuple[Path, str]:
    layout = tmp_path / "oci"
    source = build_estargz_layout(layout, [busybox_rootfs_tar(), _layer2_tar(big=True)], "v1")
    return layout, source


def _push(source: str, ref: str, *extra: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *extra, source,
                    f"docker://{ref}"], check=True)


def _top_layer(layout: Path) -> tuple[str, str]:
    """Digest and TOC digest of the image's last layer (the one holding BIG_FILE)."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    top = manifest["layers"][-1]
    return top["digest"], top["annotations"]["containerd.io/snapshot/stargz/toc.digest"]


@pytest.fixture(name="stack")
def stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    config = tmp_path / "snapshotter.toml"
    config.write_text("[lazy]\nno_background_fetch = true\n")  # loopback: plain HTTP by default
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


def test_a_tampered_chunk_is_eio_in_the_container_never_wrong_bytes(
    tmp_path: Path, stack: Stack
) -> None:
    layout, source = _layout(tmp_path)
    with run_registry(tmp_path / "registry") as registry:
        image = f"{registry.host}/test/tampered:v1"
        _push(source, image)
        digest, toc_digest = _top_layer(layout)
        local = layout / "blobs" / "sha256" / digest[7:]
        blob = open_blob(FileSource(local)).verify(toc_digest)
        chunk = blob.chunks(BIG_FILE)[1]  # a chunk in the middle of the big file
        stored = _registry_blob(registry, digest)
        data = bytearray(stored.read_bytes())
        data[(chunk.compressed_offset + chunk.compressed_end) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))  # the TOC (at the end) still matches its digest

        assert "2 lazy" in stack.rpull(image).stdout
        assert stack.run(image, "t-ok", *WORKLOAD) == MOTD + LAYER2_TEXT
        failed = stack.containerd.ctr(
            "run", "--rm", "--snapshotter", "stargz", image, "t-bad",
            "sh", "-c", f"cat /{BIG_FILE} | wc -c", check=False)
        assert "Input/output error" in failed.stdout + failed.stderr
        assert str(BIG_SIZE) not in failed.stdout  # the file was never served whole
        log = stack.snapshotter.log_text()
        lines = [li for li in log.splitlines() if "does not decompress" in li]
        assert lines, log[-3000:]
        for line in lines:  # each names the layer, the file and the offset
            assert digest in line and BIG_FILE in line
            assert f"chunk at {chunk.chunk_offset}" in line


def _registry_blob(registry: RunningRegistry, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return (registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2]
            / hexdigest / "data")


def test_basic_auth_registry_with_docker_config_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, source = _layout(tmp_path)
    with run_registry(tmp_path / "registry", auth="basic") as registry:
        assert registry.username and registry.password
        image = f"{registry.host}/test/private:v1"
        _push(source, image, f"--dest-creds={registry.username}:{registry.password}")
        docker = tmp_path / "docker"
        docker.mkdir()
        secret = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        auths = {"auths": {registry.host: {"auth": secret}}}
        (docker / "config.json").write_text(json.dumps(auths))
        # The snapshotter and rpull find the credentials where a user keeps them.
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        monkeypatch.delenv("STARGZ_USERNAME", raising=False)
        config = tmp_path / "snapshotter.toml"
        config.write_text("[lazy]\nno_background_fetch = true\n")
        work = tmp_path / "stack"
        work.mkdir()
        with running_stack(work, extracting=False, extra_args=["--config", str(config)]) as stack:
            assert os.environ["DOCKER_CONFIG"] == str(docker)
            assert "2 lazy, 0 downloaded" in stack.rpull(image).stdout
            assert stack.run(image, "t-auth", *WORKLOAD) == MOTD + LAYER2_TEXT
            assert registry.password not in stack.snapshotter.log_text()
