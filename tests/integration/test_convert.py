"""`stargz convert` against the real registry: what it writes verifies with the Go reference,
runs unmodified with containerd and podman, and survives a misbehaving registry."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import Fault, FaultProxy
from tests.support.goharness import go_verify
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, run_registry, token_requests

pytestmark = pytest.mark.integration

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED = "io.containers.estargz.uncompressed-size"
STARGZ = str(Path(sys.executable).with_name("stargz"))  # the console script of this venv
MOTD = b"hello from the stargz busybox test image\n"


def get(url: str, accept: str = ACCEPT) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        data: bytes = answer.read()
        return data


def manifest_of(host: str, repo: str, tag: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(get(f"http://{host}/v2/{repo}/manifests/{tag}"))
    return doc


def blob_of(host: str, repo: str, digest: str) -> bytes:
    data = get(f"http://{host}/v2/{repo}/blobs/{digest}", "*/*")
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def stargz(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([STARGZ, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def push(layout_ref: str, dest: str, *extra: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *extra, layout_ref,
                    f"docker://{dest}"], check=True)


@pytest.fixture(scope="module")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("busybox-image")
    rootfs = work / "rootfs"
    extract_tar(busybox_rootfs_tar(), rootfs)
    return make_oci_image(rootfs, work / "oci", "v1", ("/bin/sh", "-c", "cat /etc/motd"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def source_ref(registry: RunningRegistry, busybox_layout: str) -> str:
    ref = f"{registry.host}/test/busybox:v1"
    push(busybox_layout, ref)
    return ref


def check_converted(host: str, repo: str, tag: str, tmp_path: Path, zstd: bool = False) -> None:
    """Every layer verifies with the Go reference against its annotation; diff_ids match."""
    manifest = manifest_of(host, repo, tag)
    config = json.loads(blob_of(host, repo, manifest["config"]["digest"]))
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = blob_of(host, repo, layer["digest"])
        path = tmp_path / layer["digest"].replace(":", "-")
        path.write_bytes(blob)
        go_verify(path, layer["annotations"][TOC_DIGEST])
        if not zstd:
            plain = gzip.decompress(blob)
            assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
            assert int(layer["annotations"][UNCOMPRESSED]) == len(plain)


def test_convert_verifies_with_the_reference_and_is_reused(
    registry: RunningRegistry, source_ref: str, tmp_path: Path
) -> None:
    dest = f"{registry.host}/test/busybox:esgz"
    first = stargz("convert", "--plain-http", "--oci", source_ref, dest)
    check_converted(registry.host, "test/busybox", "esgz", tmp_path)
    assert "1 layers converted, 0 reused" in first.stderr
    again = stargz("convert", "--plain-http", "--oci", source_ref, dest)
    assert "0 layers converted, 1 reused" in again.stderr
    assert again.stdout == first.stdout  # the same manifest digest


def test_convert_zstd_chunked(registry: RunningRegistry, source_ref: str, tmp_path: Path) -> None:
    dest = f"{registry.host}/test/busybox:zstd"
    stargz("convert", "--plain-http", "--zstd-chunked", source_ref, dest)
    manifest = manifest_of(registry.host, "test/busybox", "zstd")
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert "io.containers.zstd-chunked.manifest-checksum" in manifest["layers"][0]["annotations"]
    check_converted(registry.host, "test/busybox", "zstd", tmp_path, zstd=True)


def test_convert_oci_layout_to_registry_and_back(
    registry: RunningRegistry, busybox_layout: str, tmp_path: Path
) -> None:
    dest = f"{registry.host}/test/from-layout:esgz"
    stargz("convert", "--plain-http", busybox_layout, dest)
    check_converted(registry.host, "test/from-layout", "esgz", tmp_path)
    out_layout = tmp_path / "out"
    stargz("convert", "--plain-http", dest, f"oci:{out_layout}:esgz")
    index = json.loads((out_layout / "index.json").read_text())
    [entry] = index["manifests"]
    manifest = json.loads((out_layout / "blobs/sha256" / entry["digest"][7:]).read_bytes())
    assert manifest["layers"][0]["annotations"][TOC_DIGEST]


def test_converted_image_runs_with_plain_containerd_and_podman(
    registry: RunningRegistry, source_ref: str, tmp_path: Path
) -> None:
    from tests.support.containerd import Containerd
    from tests.support.podman import Podman

    dest = f"{registry.host}/test/busybox:runs"
    stargz("convert", "--plain-http", "--oci", source_ref, dest)
    ctd = Containerd(tmp_path / "containerd", tmp_path / "no-proxy.sock")
    ctd.start()
    try:
        ctd.ctr("images", "pull", "--plain-http", dest)
        out = ctd.ctr("run", "--rm", dest, "conv-run", "cat", "/etc/motd").stdout
        assert out.encode() == MOTD
    finally:
        ctd.stop()
    podman = Podman(tmp_path / "podman")
    out = podman.run("--rm", "--network", "none", "--tls-verify=false", dest, "cat", "/etc/motd")
    assert out.encode() == MOTD


def test_basic_auth_with_docker_config_credentials(
    tmp_path: Path, busybox_layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_registry(tmp_path / "reg", auth="basic", tls=True) as reg:
        assert reg.username and reg.password
        push(busybox_layout, f"{reg.host}/test/private:v1",
             f"--dest-creds={reg.username}:{reg.password}")
        docker = tmp_path / "docker"
        docker.mkdir()
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        denied = stargz("convert", "--hosts-dir", str(reg.hosts_dir()),
                        f"{reg.host}/test/private:v1", f"{reg.host}/test/private:esgz",
                        check=False)
        assert denied.returncode == 1
        assert denied.stderr.count("\n") == 1 and "stargz: error:" in denied.stderr
        token = f"{reg.username}:{reg.password}".encode()
        import base64
        auth = {"auths": {reg.host: {"auth": base64.b64encode(token).decode()}}}
        (docker / "config.json").write_text(json.dumps(auth))
        result = stargz("convert", "--hosts-dir", str(reg.hosts_dir()),
                        f"{reg.host}/test/private:v1", f"{reg.host}/test/private:esgz")
        assert reg.password not in result.stderr + result.stdout
        assert result.stdout.startswith("sha256:")


def test_token_auth(tmp_path: Path, busybox_layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with run_registry(tmp_path / "reg", auth="token") as reg:
        assert reg.username and reg.password
        push(busybox_layout, f"{reg.host}/test/tok:v1",
             f"--dest-creds={reg.username}:{reg.password}")
        monkeypatch.setenv("STARGZ_USERNAME", reg.username)
        monkeypatch.setenv("STARGZ_PASSWORD", reg.password)
        monkeypatch.setenv("STARGZ_REGISTRY", reg.host)  # the env credentials are for it only
        # The hosts dir makes the registry and its token realm plain HTTP (else no password).
        stargz("convert", "--hosts-dir", str(reg.hosts_dir()), f"{reg.host}/test/tok:v1",
               f"{reg.host}/test/tok:esgz")
        assert "POST password" in token_requests(reg)


FAULTS = [
    Fault("reset", path_contains="/blobs/", times=2),
    Fault("status", path_contains="/blobs/", status=500, times=2),
    Fault("status", path_contains="/manifests/", status=429, retry_after="1", times=1),
    Fault("truncate", path_contains="/blobs/sha256", method="GET", times=1),
    Fault("stall", path_contains="/blobs/sha256", method="GET", times=1, stall_seconds=60),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}")
def test_misbehaving_registry_gives_a_correct_image(
    registry: RunningRegistry, source_ref: str, fault: Fault, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no reuse: really convert
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add_fault(fault)
        tag = f"fault-{fault.kind}-{fault.status}"
        src = source_ref.replace(registry.host, proxy.host)
        stargz("convert", "--plain-http", "--timeout", "3", src, f"{proxy.host}/test/busybox:{tag}")
        assert any(s.fault == fault.kind for s in proxy.served()), "the fault was not injected"
    check_converted(registry.host, "test/busybox", tag, tmp_path)


def test_registry_that_keeps_failing_leaves_no_tag(
    registry: RunningRegistry, source_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add_fault(Fault("status", path_contains="/blobs/uploads", status=503, times=1000))
        src = source_ref.replace(registry.host, proxy.host)
        # A chunk size no other test uses, so the converted blob is new to the registry.
        result = stargz("convert", "--plain-http", "--chunk-size", "65536", src,
                        f"{proxy.host}/test/busybox:broken", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("stargz: error:") and "503" in lines[-1]
    with pytest.raises(urllib.error.HTTPError) as missing:
        manifest_of(registry.host, "test/busybox", "broken")
    assert missing.value.code == 404
    missing.value.close()


def test_image_converted_by_ctr_remote_reads_with_our_client(
    registry: RunningRegistry, source_ref: str, tmp_path: Path
) -> None:
    from tests.support.containerd import Containerd

    dest = f"{registry.host}/test/busybox:ctr-remote"
    ctd = Containerd(tmp_path / "containerd", tmp_path / "no-proxy.sock")
    ctd.start()
    try:
        ctd.ctr("images", "pull", "--plain-http", source_ref)
        ctd.ctr("images", "convert", "--oci", "--estargz", source_ref, dest, tool="ctr-remote")
        ctd.ctr("images", "push", "--plain-http", dest)
    finally:
        ctd.stop()
    manifest = manifest_of(registry.host, "test/busybox", "ctr-remote")
    for layer in manifest["layers"]:
        want = layer["annotations"][TOC_DIGEST]
        got = stargz("get-toc-digest", "--plain-http", dest, layer["digest"]).stdout.strip()
        assert got == want
        blob = tmp_path / "layer.blob"
        blob.write_bytes(blob_of(registry.host, "test/busybox", layer["digest"]))
        stargz("blob", "verify", str(blob), "--toc-digest", want)
        out = tmp_path / "rootfs"
        stargz("blob", "extract", str(blob), str(out), "--toc-digest", want)
        assert (out / "etc/motd").read_bytes() == MOTD


def test_get_toc_digest_of_a_plain_gzip_layer_is_one_clear_error(
    registry: RunningRegistry, source_ref: str
) -> None:
    [layer] = manifest_of(registry.host, "test/busybox", "v1")["layers"]
    result = stargz("get-toc-digest", "--plain-http", source_ref, layer["digest"], check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("stargz: error:") and "footer" in line
