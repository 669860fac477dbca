"""ctr-remote's convert flags on `stargz convert`, against the real registry: the external TOC
(a TOC image next to the image, as the reference writes it), keeping diff IDs, plain tar layers,
and workload records in the reference's JSON format, read by us and by Debian's ctr-remote.

Debian's ctr-remote (0.12) predates --estargz-external-toc, so no Go tool here writes or reads
external-TOC images; the Go reference (0.12 library) checks our TOCs and chunks instead, on the
layer with its TOC put back in (the same bytes the external TOC holds)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stargz.convert.workload import RecordEntry, write_records
from stargz.estargz.footer import estargz_footer, external_toc_footer
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from tests.integration.test_convert import (
    MOTD,
    TOC_DIGEST,
    blob_of,
    manifest_of,
    push,
    stargz,
)
from tests.support.faultproxy import FaultProxy
from tests.support.goharness import go_verify
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

LAYER_DIGEST = "containerd.io/snapshot/stargz/layer.digest"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def config_of(host: str, repo: str, manifest: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(blob_of(host, repo, manifest["config"]["digest"]))
    return doc


def toc_json_of(toc_blob: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(toc_blob))) as tar:
        member = tar.extractfile("stargz.index.json")
        assert member is not None
        return member.read()


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module", name="source_ref")
def source_ref_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
                       ) -> str:
    work = tmp_path_factory.mktemp("busybox-image")
    extract_tar(busybox_rootfs_tar(), work / "rootfs")
    layout = make_oci_image(work / "rootfs", work / "oci", "v1",
                            ("/bin/sh", "-c", "cat /etc/motd"))
    ref = f"{registry.host}/test/busybox:v1"
    push(layout, ref)
    return ref


@pytest.fixture(name="ctd")
def ctd_fixture(tmp_path: Path) -> Iterator[Any]:
    from tests.support.containerd import Containerd

    ctd = Containerd(tmp_path / "containerd", tmp_path / "no-proxy.sock")
    ctd.start()
    try:
        yield ctd
    finally:
        ctd.stop()


def test_external_toc_image_as_the_reference_writes_it(
    registry: RunningRegistry, source_ref: str, tmp_path: Path, ctd: Any
) -> None:
    host = registry.host
    dest = f"{host}/test/busybox:ext"
    stargz("convert", "--plain-http", "--oci", "--estargz-external-toc", source_ref, dest)
    manifest = manifest_of(host, "test/busybox", "ext")
    toc_image = manifest_of(host, "test/busybox", "ext-esgztoc")
    assert blob_of(host, "test/busybox", toc_image["config"]["digest"]) == b"{}"
    tocs = {layer[("annotations")][LAYER_DIGEST]: layer for layer in toc_image["layers"]}
    assert sorted(tocs) == sorted(layer["digest"] for layer in manifest["layers"])
    for layer in manifest["layers"]:
        blob = blob_of(host, "test/busybox", layer["digest"])
        assert blob.endswith(external_toc_footer())
        toc_blob = blob_of(host, "test/busybox", tocs[layer["digest"]]["digest"])
        want = layer["annotations"][TOC_DIGEST]
        assert "sha256:" + hashlib.sha256(toc_json_of(toc_blob)).hexdigest() == want
        # the Go reference reads the layer with its TOC put back where a TOC member goes
        data = blob[:-len(external_toc_footer())]
        whole = tmp_path / "whole.blob"
        whole.write_bytes(data + toc_blob + estargz_footer(len(data)))
        go_verify(whole, want)
    # and the image runs as it is with plain containerd (the layers are ordinary tar.gz)
    ctd.ctr("images", "pull", "--plain-http", dest)
    assert ctd.ctr("run", "--rm", dest, "ext-run", "cat", "/etc/motd").stdout.encode() == MOTD


def test_keep_diff_id_leaves_every_diff_id_as_it_was(
    registry: RunningRegistry, source_ref: str
) -> None:
    host = registry.host
    stargz("convert", "--plain-http", "--oci", "--estargz-external-toc", "--estargz-keep-diff-id",
           source_ref, f"{host}/test/busybox:keep")
    before = config_of(host, "test/busybox", manifest_of(host, "test/busybox", "v1"))
    manifest = manifest_of(host, "test/busybox", "keep")
    after = config_of(host, "test/busybox", manifest)
    assert after["rootfs"]["diff_ids"] == before["rootfs"]["diff_ids"]
    for layer, diff_id in zip(manifest["layers"], after["rootfs"]["diff_ids"], strict=True):
        plain = gzip.decompress(blob_of(host, "test/busybox", layer["digest"]))
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        assert layer["annotations"][TOC_DIGEST]
    assert manifest_of(host, "test/busybox", "keep-esgztoc")["layers"]


def test_uncompress_writes_plain_tar_layers(registry: RunningRegistry, source_ref: str,
                                            ctd: Any) -> None:
    host = registry.host
    dest = f"{host}/test/busybox:plain"
    stargz("convert", "--plain-http", "--oci", "--uncompress", source_ref, dest)
    manifest = manifest_of(host, "test/busybox", "plain")
    diff_ids = config_of(host, "test/busybox", manifest)["rootfs"]["diff_ids"]
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        assert layer["mediaType"] == OCI_LAYER
        assert layer["digest"] == diff_id
        assert TOC_DIGEST not in layer.get("annotations", {})
    ctd.ctr("images", "pull", "--plain-http", dest)
    assert ctd.ctr("run", "--rm", dest, "plain-run", "cat", "/etc/motd").stdout.encode() == MOTD


def prioritized_first(host: str, repo: str, tag: str, tmp_path: Path) -> list[str]:
    """The TOC's names, in its order, before the prefetch landmark (the blob verified by the
    Go reference first)."""
    [layer] = manifest_of(host, repo, tag)["layers"]
    path = tmp_path / f"{tag}.blob"
    path.write_bytes(blob_of(host, repo, layer["digest"]))
    go_verify(path, layer["annotations"][TOC_DIGEST])
    names = [entry.name for entry in open_blob(FileSource(path)).toc.entries]
    return names[:names.index(".prefetch.landmark")]


def test_records_in_the_references_format_both_ways(
    registry: RunningRegistry, source_ref: str, tmp_path: Path, ctd: Any
) -> None:
    host = registry.host
    record = tmp_path / "record.json"  # as `ctr-remote images optimize --record-out` writes it
    write_records(record, [RecordEntry("etc/motd", "sha256:" + "0" * 64, 0),
                           RecordEntry("not/in/this/layer", "sha256:" + "0" * 64, 1),
                           RecordEntry("bin/busybox", "sha256:" + "0" * 64, 0)])
    stargz("convert", "--plain-http", "--oci", "--estargz-record-in", str(record), source_ref,
           f"{host}/test/busybox:recorded")
    ours = prioritized_first(host, "test/busybox", "recorded", tmp_path)
    assert [name for name in ours if name in ("etc/motd", "bin/busybox")] == [
        "etc/motd", "bin/busybox"]
    # Debian's ctr-remote reads the same file the same way
    dest = f"{host}/test/busybox:recorded-go"
    ctd.ctr("images", "pull", "--plain-http", source_ref)
    ctd.ctr("images", "convert", "--oci", "--estargz", "--estargz-record-in", str(record),
            source_ref, dest, tool="ctr-remote")
    ctd.ctr("images", "push", "--plain-http", dest)
    theirs = prioritized_first(host, "test/busybox", "recorded-go", tmp_path)
    assert [name for name in theirs if name in ("etc/motd", "bin/busybox")] == [
        "etc/motd", "bin/busybox"]


def test_meaningless_combinations_fail_before_any_download(
    registry: RunningRegistry, source_ref: str
) -> None:
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        via_proxy = proxy.host + "/" + source_ref.split("/", 1)[1]
        for flags, message in ((["--level", "99"], "level 99"),
                               (["--uncompress", "--zstd-chunked"], "--uncompress"),
                               (["--estargz-keep-diff-id"], "external TOC")):
            done = stargz("convert", "--plain-http", *flags, via_proxy,
                          f"{proxy.host}/test/busybox:never", check=False)
            assert done.returncode == 1
            [line] = done.stderr.splitlines()
            assert line.startswith("stargz: error:") and message in line, line
        assert proxy.served() == []  # not a request, let alone a download
        # the same command with a good level does reach the registry through the proxy
        stargz("convert", "--plain-http", "--level", "1", via_proxy,
               f"{proxy.host}/test/busybox:level1")
        assert proxy.served("/blobs/", method="GET")
