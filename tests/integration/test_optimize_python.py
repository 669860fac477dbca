"""`stargz optimize` of the debootstrap python3 image for `python3 -c 'import json; ...'`, and
what the optimized image does: its prioritized files are what the workload read, in that order;
the Go reference verifies it; our snapshotter runs it lazily on the prefetched files alone;
plain containerd and podman run it; a record from Debian's `ctr-remote images optimize` gives
the same order through --record-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stargz.convert.workload import RecordEntry, read_record_entries
from tests.integration.test_convert import TOC_DIGEST, blob_of, manifest_of, push, stargz
from tests.integration.test_optimize import prioritized
from tests.integration.test_rpull_containerd import running_stack
from tests.support.containerd import Containerd
from tests.support.faultproxy import FaultProxy
from tests.support.goharness import go_verify
from tests.support.images import debian_python_rootfs_tar, extract_tar, make_oci_image
from tests.support.podman import Podman
from tests.support.registry import RunningRegistry, run_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "test/python"
ENTRYPOINT, ARGS = ["python3", "-c"], ["import json; print('hello', json.dumps([1]))"]
OUTPUT = "hello [1]\n"
WORKLOAD = ["--entrypoint", json.dumps(ENTRYPOINT), "--args", json.dumps(ARGS)]


@dataclass(frozen=True)
class Optimized:
    ref: str
    record: list[RecordEntry]
    blob: Path
    toc_digest: str


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module", name="source")
def source_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("python-image")
    extract_tar(debian_python_rootfs_tar(), work / "rootfs")
    layout = make_oci_image(work / "rootfs", work / "oci", "v1", ("python3",))
    ref = f"{registry.host}/{REPO}:gzip"
    push(layout, ref)
    return ref


def _layer(registry: RunningRegistry, tag: str, directory: Path) -> tuple[Path, str]:
    (layer,) = manifest_of(registry.host, REPO, tag)["layers"]
    path = directory / f"{tag}.layer"
    path.write_bytes(blob_of(registry.host, REPO, layer["digest"]))
    return path, layer["annotations"][TOC_DIGEST]


@pytest.fixture(scope="module", name="optimized")
def optimized_fixture(registry: RunningRegistry, source: str,
                      tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    work = tmp_path_factory.mktemp("optimized")
    record = work / "record.json"
    done = stargz("optimize", "--plain-http", "--oci", *WORKLOAD, "--record-out", str(record),
                  source, f"{registry.host}/{REPO}:opt")
    assert done.stdout.startswith(OUTPUT)
    blob, toc_digest = _layer(registry, "opt", work)
    return Optimized(f"{registry.host}/{REPO}:opt", read_record_entries(record), blob,
                     toc_digest)


def test_the_files_python_read_come_first_in_access_order(optimized: Optimized) -> None:
    recorded = [entry.path for entry in optimized.record]
    first = prioritized(optimized.blob, optimized.toc_digest)
    assert first == recorded  # one layer: everything recorded is in it, in access order
    binary = first.index("usr/bin/python3.11")
    assert binary < first.index("usr/lib/x86_64-linux-gnu/libc.so.6")  # exec, then its libs
    assert first.index("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") < first.index(
        "usr/lib/x86_64-linux-gnu/libc.so.6")
    assert first.index("usr/lib/python3.11/encodings/__init__.py") < first.index(
        "usr/lib/python3.11/json/__init__.py") < first.index(
        "usr/lib/python3.11/json/decoder.py")
    assert "usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so" in first
    assert not [name for name in first if name.startswith(("usr/share/doc/", "usr/share/man/",
                                                           "var/lib/dpkg/"))]
    assert not [name for name in first if "/http/" in name]  # a module it never imported
    assert go_verify(optimized.blob, optimized.toc_digest)["toc_digest"] == optimized.toc_digest


def test_a_lazy_run_fetches_the_prefetch_range_and_almost_nothing_more(
        registry: RunningRegistry, optimized: Optimized, tmp_path: Path) -> None:
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        config = tmp_path / "snapshotter.toml"
        config.write_text(f'[lazy]\nplain_http = ["{proxy.host}"]\nno_background_fetch = true\n')
        with running_stack(tmp_path, extracting=False,
                           extra_args=["--config", str(config)]) as stack:
            image = f"{proxy.host}/{REPO}:opt"
            assert "1 lazy" in stack.rpull(image).stdout
            # the container's Prepare returns once the prefetch is done
            stack.containerd.ctr("containers", "create", "--snapshotter", "stargz", image,
                                 "t-prefetched")
            at_mount = proxy.served("/blobs/", method="GET")
            out = stack.run(image, "t-optimized", *ENTRYPOINT, *ARGS)
            on_demand = proxy.served("/blobs/", method="GET")[len(at_mount):]
    assert out == OUTPUT
    prefetch_end = _prefetch_end(optimized)
    mount_bytes = sum(s.body_bytes for s in at_mount)
    demand_bytes = sum(s.body_bytes for s in on_demand)
    print(f"optimized python image, lazy: {len(at_mount)} blob GETs ({mount_bytes} bytes) at "
          f"mount, prefetch range {prefetch_end} bytes; {len(on_demand)} GETs ({demand_bytes} "
          "bytes) while python ran")
    assert mount_bytes >= prefetch_end  # the whole prefetch range came at mount
    assert len(on_demand) <= 2 and demand_bytes < prefetch_end // 20


def _prefetch_end(optimized: Optimized) -> int:
    from stargz.estargz.reader import open_blob
    from stargz.estargz.source import FileSource

    end = open_blob(FileSource(optimized.blob)).verify(optimized.toc_digest).prefetch_end()
    assert end
    return end


def test_plain_containerd_and_podman_run_the_optimized_image(
        optimized: Optimized, tmp_path: Path) -> None:
    ctd = Containerd(tmp_path / "containerd", tmp_path / "no-proxy.sock")
    ctd.start()
    try:
        ctd.ctr("images", "pull", "--plain-http", optimized.ref, timeout=300)
        out = ctd.ctr("run", "--rm", optimized.ref, "t-plain", *ENTRYPOINT, *ARGS).stdout
    finally:
        ctd.stop()
    assert out == OUTPUT
    podman = Podman(tmp_path / "podman")
    try:
        out = podman.run("--rm", "--network", "none", "--tls-verify=false", optimized.ref,
                         *ENTRYPOINT, *ARGS)
    finally:
        podman.reset()
    assert out == OUTPUT


def test_a_ctr_remote_record_gives_the_same_order(
        registry: RunningRegistry, source: str, tmp_path: Path) -> None:
    record = tmp_path / "ctr-remote.json"
    ctd = Containerd(tmp_path / "containerd", tmp_path / "no-proxy.sock")
    ctd.start()
    try:
        ctd.ctr("images", "pull", "--plain-http", source, timeout=300)
        ctd.ctr("images", "optimize", "--oci", "--period", "20", "--entrypoint",
                json.dumps(ENTRYPOINT), "--args", json.dumps(ARGS), "--record-out", str(record),
                source, f"{registry.host}/{REPO}:by-ctr-remote", tool="ctr-remote", timeout=900)
    finally:
        ctd.stop()
    theirs = read_record_entries(record)
    assert {entry.layer_index for entry in theirs} == {0}
    stargz("optimize", "--plain-http", "--oci", "--record-in", str(record), source,
           f"{registry.host}/{REPO}:from-ctr-remote")
    blob, toc_digest = _layer(registry, "from-ctr-remote", tmp_path)
    paths = list(dict.fromkeys(entry.path for entry in theirs))
    assert prioritized(blob, toc_digest) == paths
    assert "usr/lib/python3.11/json/__init__.py" in paths
