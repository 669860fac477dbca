"""Each honoured key of the one config file shown at work: our snapshotter with the reference's
config.toml keys, the real registry behind counting fault proxies, containerd pulling through it
(``stargz rpull``) or the snapshotter's own gRPC API for the labels a pull can not send."""

from __future__ import annotations

import contextlib
import io
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from stargz.estargz import writer
from stargz.estargz.writer import BuildOptions, build
from stargz.snapshotter.api import snapshots_pb2 as pb
from stargz.snapshotter.api import snapshots_pb2_grpc
from stargz.snapshotter.lazy import layer_dirname
from stargz.snapshotter.remote import (
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_PREFETCH,
    LABEL_STARGZ_REFERENCE,
    LABEL_STARGZ_SKIP_VERIFY,
    LABEL_TOC_DIGEST,
)
from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    BIG_FILE,
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    OCI_LAYER_GZIP,
    WORKLOAD,
    Stack,
    _layer2_tar,
    _layer_digests,
    _put_blob,
    _put_image_manifest,
    build_estargz_layout,
    estargz_image_fixture,
    image_fixture,
    push,
    registry_fixture,
    running_stack,
)
from tests.support.containerd import SnapshotterProcess
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import busybox_rootfs_tar
from tests.support.registry import free_port

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _proxy(registry: str) -> Iterator[FaultProxy]:
    host, port = registry.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def _via(proxy: FaultProxy, image: str) -> str:
    return proxy.host + "/" + image.split("/", 1)[1]


@contextlib.contextmanager
def _stack(work: Path, toml: str) -> Iterator[Stack]:
    work.mkdir(exist_ok=True)
    config = work / "config.toml"
    config.write_text(toml)
    with running_stack(work, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


def _layer_requests(proxy: FaultProxy, digests: Sequence[str]) -> int:
    return sum(len(proxy.served(digest)) for digest in digests)


def _layout(layout: Path, tars: Sequence[bytes | Path], tag: str, prioritized: Sequence[str] = (),
            toc_annotation: bool = True, landmark: bool = True) -> str:
    """An OCI layout of eStargz layers built with ``prioritized`` files (a prefetch landmark
    after them), optionally without the TOC digest annotation; returns oci:DIR:TAG."""
    import json

    layers, diff_ids = [], []
    for tar in tars:
        data = tar if isinstance(tar, bytes) else tar.read_bytes()
        names = [p for p in prioritized if p.encode() in data]
        blob = io.BytesIO()
        with _without_landmark(not landmark):
            result = build(io.BytesIO(data), blob, BuildOptions(chunk_size=1 << 20, level=6,
                                                                prioritized=names))
        annotations = result.annotations()
        if not toc_annotation:
            annotations.pop(LABEL_TOC_DIGEST)
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": _put_blob(layout, blob.getvalue()),
                       "size": result.blob_size, "annotations": annotations})
        diff_ids.append(result.diff_id)
    manifest = _put_image_manifest(layout, "amd64", layers, diff_ids)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return f"oci:{layout}:{tag}"


@contextlib.contextmanager
def _without_landmark(active: bool) -> Iterator[None]:
    """Our writer without its no-prefetch landmark: a blob like an old stargz one, whose
    prefetch the config's prefetch_size or the stargz.prefetch label decides."""
    original = writer._streamed

    def streamed(tar: Any) -> Iterator[Any]:
        members = original(tar)
        next(members)  # the landmark comes first
        yield from members

    if active:
        writer._streamed = streamed
    try:
        yield
    finally:
        writer._streamed = original


@pytest.fixture(scope="module", name="landmark_image")
def landmark_image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two layers; the top one prioritizes its 12 MiB file: a prefetch takes all of it."""
    layout = tmp_path_factory.mktemp("landmark") / "oci"
    layout.mkdir()
    source = _layout(layout, [busybox_rootfs_tar(), _layer2_tar(big=True)], "v1",
                     prioritized=[BIG_FILE])
    return push(source, registry, "test/config-landmark:v1")


@pytest.fixture(scope="module", name="no_toc_image")
def no_toc_image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """eStargz layers whose manifest names no TOC digest (legacy stargz images)."""
    layout = tmp_path_factory.mktemp("no-toc") / "oci"
    layout.mkdir()
    source = _layout(layout, [_layer2_tar(big=False)], "v1", toc_annotation=False)
    return push(source, registry, "test/config-no-toc:v1")


def test_mirror_serves_the_layers_and_metrics_address_answers(
        tmp_path: Path, registry: str, estargz_image: str) -> None:
    port = free_port()
    with _proxy(registry) as origin, _proxy(registry) as mirror, _stack(tmp_path, f"""
no_background_fetch = true
metrics_address = "127.0.0.1:{port}"
[[resolver.host."{origin.host}".mirrors]]
host = "{mirror.host}"
""") as stack:
        image = _via(origin, estargz_image)
        assert "2 lazy, 0 downloaded" in stack.rpull(image).stdout, stack.snapshotter.log_text()
        assert stack.run(image, "t-mirror", *WORKLOAD) == MOTD + LAYER2_TEXT
        layers = _layer_digests(estargz_image)
        assert _layer_requests(origin, layers) == 0  # containerd got manifest/config from it
        assert all(mirror.served(d, method="GET") for d in layers)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for digest in layers:
            assert f'stargz_fs_operation_count{{layer="{digest}",operation_type="mount"}}' \
                in text.replace(", ", ",") or f'layer="{digest}"' in text


def test_the_origin_serves_when_the_mirror_fails(tmp_path: Path, registry: str,
                                                 estargz_image: str) -> None:
    with _proxy(registry) as origin, _proxy(registry) as mirror, _stack(tmp_path, f"""
no_background_fetch = true
[blob]
max_retries = 0
[[resolver.host."{origin.host}".mirrors]]
host = "{mirror.host}"
""") as stack:
        mirror.add_fault(Fault("status", path_contains="/blobs/", status=404, times=1000))
        image = _via(origin, estargz_image)
        assert "2 lazy, 0 downloaded" in stack.rpull(image).stdout, stack.snapshotter.log_text()
        assert stack.run(image, "t-fallback", *WORKLOAD) == MOTD + LAYER2_TEXT
        layers = _layer_digests(estargz_image)
        assert all(mirror.served(d) for d in layers)  # tried first, answered 404
        assert all(origin.served(d, method="GET") for d in layers)
        assert f"mirror {mirror.host} failed" in stack.snapshotter.log_text()


@pytest.mark.parametrize("noprefetch", [False, True])
def test_noprefetch_fetches_no_prefetch_range(tmp_path: Path, registry: str,
                                              landmark_image: str, noprefetch: bool) -> None:
    with _proxy(registry) as proxy, _stack(tmp_path, f"""
no_background_fetch = true
noprefetch = {str(noprefetch).lower()}
""") as stack:
        image = _via(proxy, landmark_image)
        assert "2 lazy" in stack.rpull(image).stdout, stack.snapshotter.log_text()
        # the container's Prepare returns once the prefetch is done (the pull's did not wait)
        stack.containerd.ctr("containers", "create", "--snapshotter", "stargz", image, "t-pf")
        fetched = proxy.bytes_served("/blobs/", method="GET")
        if noprefetch:  # footers and TOCs only
            assert fetched < BIG_SIZE // 8, fetched
        else:  # the landmark's range: the prioritized 12 MiB file
            assert fetched > BIG_SIZE, fetched


def test_fetching_timeout_bites(tmp_path: Path, registry: str, estargz_image: str) -> None:
    """A chunk fetch the registry stalls for 20 s fails after fetching_timeout_sec: the read is
    an I/O error, not a hang."""
    with _proxy(registry) as proxy, _stack(tmp_path, """
no_background_fetch = true
[blob]
fetching_timeout_sec = 1
""") as stack:
        image = _via(proxy, estargz_image)
        assert "2 lazy" in stack.rpull(image).stdout, stack.snapshotter.log_text()[-3000:]
        top = _layer_digests(estargz_image)[-1]
        proxy.add_fault(Fault("stall", path_contains=top, method="GET", only_ranged=True,
                              keep_fraction=0, stall_seconds=20, times=100))
        result = stack.containerd.ctr("run", "--rm", "--snapshotter", "stargz", image,
                                      "t-timeout", "cat", "/etc/layer2", check=False)
        assert result.returncode != 0 and "Input/output error" in result.stdout + result.stderr
        assert "timed out after 1.0 s" in stack.snapshotter.log_text()


@pytest.mark.parametrize(("max_retries", "lazy"), [(1, False), (3, True)])
def test_max_retries_bites(tmp_path: Path, registry: str, estargz_image: str,
                           max_retries: int, lazy: bool) -> None:
    with _proxy(registry) as proxy, _stack(tmp_path, f"""
no_background_fetch = true
[blob]
max_retries = {max_retries}
min_wait_msec = 1
max_wait_msec = 5
""") as stack:
        bottom = _layer_digests(estargz_image)[0]
        proxy.add_fault(Fault("status", path_contains=bottom, method="GET", only_ranged=True,
                              status=503, times=2))
        result = stack.rpull(_via(proxy, estargz_image))
        expected = "2 lazy, 0 downloaded" if lazy else "1 lazy, 1 downloaded"
        assert expected in result.stdout, stack.snapshotter.log_text()[-3000:]


def test_disable_verification_mounts_a_wrong_toc_digest_loudly(
        tmp_path: Path, registry: str) -> None:
    layout = tmp_path / "oci"
    source = build_estargz_layout(layout, [busybox_rootfs_tar(), _layer2_tar(big=False)], "v1",
                                  wrong_toc=True)
    image = push(source, registry, "test/config-wrong-toc:v1")
    with _stack(tmp_path / "w", "disable_verification = true\n") as stack:
        assert "2 lazy, 0 downloaded" in stack.rpull(image).stdout, stack.snapshotter.log_text()
        assert stack.run(image, "t-noverify", *WORKLOAD) == MOTD + LAYER2_TEXT
        log = stack.snapshotter.log_text()
        assert log.count("WARNING") >= 2 and "NOT verifying TOC" in log
        assert "disable_verification" in log


def _prepare(address: Path, key: str, labels: dict[str, str],
             parent: str = "") -> grpc.StatusCode:
    with grpc.insecure_channel(f"unix://{address}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.Prepare(pb.PrepareSnapshotRequest(snapshotter="stargz", key=key, parent=parent,
                                                   labels=labels), timeout=60)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize("allowed", [False, True])
def test_skipverify_label_only_with_allow_no_verification(
        tmp_path: Path, registry: str, no_toc_image: str, allowed: bool) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"allow_no_verification = {str(allowed).lower()}\n")
    snapshotter = SnapshotterProcess(tmp_path / "s.sock", tmp_path / "root", tmp_path / "s.log",
                                     extra_args=["--config", str(config)])
    snapshotter.start()
    try:
        [digest] = _layer_digests(no_toc_image)
        labels = {LABEL_SNAPSHOT_REF: "sha256:" + "c" * 64,
                  LABEL_STARGZ_REFERENCE: no_toc_image, LABEL_STARGZ_DIGEST: digest}
        # without the label: declined (the client downloads), whatever the config
        assert _prepare(snapshotter.address, "k1", labels) == grpc.StatusCode.OK
        skip = {**labels, LABEL_STARGZ_SKIP_VERIFY: "true",
                LABEL_SNAPSHOT_REF: "sha256:" + "d" * 64}
        code = _prepare(snapshotter.address, "k2", skip)
        layer_dir = tmp_path / "root" / "fuse" / layer_dirname(digest)
        log = snapshotter.log_text()
        if allowed:  # the remote snapshot exists: committed without a download
            assert code == grpc.StatusCode.ALREADY_EXISTS, log[-3000:]
            assert (layer_dir / "etc/layer2").read_bytes() == LAYER2_TEXT.encode()
            assert "NOT verifying TOC" in log and "allow_no_verification" in log
        else:
            assert code == grpc.StatusCode.OK, log[-3000:]
            assert not layer_dir.exists()
            assert "needs allow_no_verification" in log
    finally:
        snapshotter.stop()


@pytest.fixture(scope="module", name="no_landmark_image")
def no_landmark_image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One eStargz layer (its 12 MiB file included) with no landmark at all."""
    layout = tmp_path_factory.mktemp("no-landmark") / "oci"
    layout.mkdir()
    source = _layout(layout, [_layer2_tar(big=True)], "v1", landmark=False)
    return push(source, registry, "test/config-no-landmark:v1")


@pytest.mark.parametrize(("label", "prefetch_size"), [(None, 0), ("20000000", 0),
                                                     (None, 20000000), ("0", 20000000)])
def test_prefetch_label_sets_the_bytes_to_prefetch(
        tmp_path: Path, registry: str, no_landmark_image: str, label: str | None,
        prefetch_size: int) -> None:
    """Without a landmark, the stargz.prefetch label says how much to prefetch, the config's
    prefetch_size when there is no label."""
    config = tmp_path / "config.toml"
    config.write_text(f"no_background_fetch = true\nprefetch_size = {prefetch_size}\n")
    with _proxy(registry) as proxy:
        snapshotter = SnapshotterProcess(tmp_path / "s.sock", tmp_path / "root",
                                         tmp_path / "s.log", extra_args=["--config", str(config)])
        snapshotter.start()
        try:
            image = _via(proxy, no_landmark_image)
            [digest] = _layer_digests(no_landmark_image)
            toc = _toc_digest(no_landmark_image)
            labels = {LABEL_SNAPSHOT_REF: "sha256:" + "e" * 64, LABEL_STARGZ_REFERENCE: image,
                      LABEL_STARGZ_DIGEST: digest, LABEL_TOC_DIGEST: toc}
            if label is not None:
                labels[LABEL_STARGZ_PREFETCH] = label
            code = _prepare(snapshotter.address, "k", labels)
            assert code == grpc.StatusCode.ALREADY_EXISTS, snapshotter.log_text()[-3000:]
            # a container's snapshot on the layer: returns once the prefetch is done
            assert _prepare(snapshotter.address, "c", {}, parent=labels[LABEL_SNAPSHOT_REF]) \
                == grpc.StatusCode.OK, snapshotter.log_text()[-3000:]
            fetched = proxy.bytes_served(digest, method="GET")
            if int(label if label is not None else prefetch_size) == 0:  # footer and TOC only
                assert fetched < BIG_SIZE // 8, fetched
            else:  # the whole blob, the 12 MiB file in it
                assert fetched > BIG_SIZE, fetched
        finally:
            snapshotter.stop()


def _toc_digest(image: str) -> str:
    from tests.integration.test_rpull_containerd import _manifest

    [layer] = _manifest(image)["layers"]
    return str(layer["annotations"][LABEL_TOC_DIGEST])


@pytest.mark.parametrize("cache_type", ["", "memory"])
def test_filesystem_cache_type_memory_keeps_nothing_on_disk(
        tmp_path: Path, registry: str, estargz_image: str, cache_type: str) -> None:
    with _stack(tmp_path, f'filesystem_cache_type = "{cache_type}"\n') as stack:
        assert "2 lazy" in stack.rpull(estargz_image).stdout, stack.snapshotter.log_text()
        assert stack.run(estargz_image, "t-cache", *WORKLOAD) == MOTD + LAYER2_TEXT
        cache = tmp_path / "snap-root" / "cache"
        on_disk = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
        if cache_type == "memory":
            assert on_disk == []
        else:  # the default: chunks (and TOCs) kept under <root>/cache
            assert on_disk


def test_a_mirrors_request_timeout_hands_over_to_the_origin(tmp_path: Path, registry: str,
                                                            estargz_image: str) -> None:
    """A mirror that stalls every blob request for 20 s: after its request_timeout_sec (1 s)
    the origin serves the layers."""
    with _proxy(registry) as origin, _proxy(registry) as mirror, _stack(tmp_path, f"""
no_background_fetch = true
[blob]
max_retries = 0
[[resolver.host."{origin.host}".mirrors]]
host = "{mirror.host}"
request_timeout_sec = 1
""") as stack:
        mirror.add_fault(Fault("stall", path_contains="/blobs/", keep_fraction=0,
                               stall_seconds=20, times=1000))
        image = _via(origin, estargz_image)
        assert "2 lazy, 0 downloaded" in stack.rpull(image).stdout, stack.snapshotter.log_text()
        layers = _layer_digests(estargz_image)
        assert all(origin.served(d, method="GET") for d in layers)
        assert f"mirror {mirror.host} failed" in stack.snapshotter.log_text()


def test_no_prometheus_serves_no_metrics(tmp_path: Path, registry: str,
                                         estargz_image: str) -> None:
    port = free_port()
    with _stack(tmp_path, f'no_prometheus = true\nmetrics_address = "127.0.0.1:{port}"\n'
                ) as stack:
        assert "2 lazy" in stack.rpull(estargz_image).stdout, stack.snapshotter.log_text()
        with pytest.raises(OSError):  # connection refused: nothing listens there
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
