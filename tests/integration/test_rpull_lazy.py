"""Lazy pulling for real: `stargz rpull` into containerd, our snapshotter with its `[lazy]` layers
(FUSE), the registry behind a counting proxy. The container runs while the registry served a
small part of the image."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.fs.tree import STATE_DIR
from stargz.snapshotter.lazy import layer_dirname
from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    _layer2_tar,
    _layer_digests,
    build_estargz_layout,
    estargz_image_fixture,
    image_fixture,
    push,
    registry_fixture,
    running_stack,
)
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import busybox_rootfs_tar, debian_python_rootfs_tar

pytestmark = pytest.mark.integration


@pytest.fixture(name="proxy")
def proxy_fixture(registry: str) -> Iterator[FaultProxy]:
    host, port = registry.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def _lazy_config(work: Path, proxy: FaultProxy) -> Path:
    config = work / "snapshotter.toml"
    # no background fetch: what the registry serves is then only what the run needed
    config.write_text(f'[lazy]\nplain_http = ["{proxy.host}"]\nno_background_fetch = true\n')
    return config


@pytest.fixture(name="lazy_stack")
def lazy_stack_fixture(tmp_path: Path, proxy: FaultProxy) -> Iterator[Stack]:
    config = _lazy_config(tmp_path, proxy)
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


def _via_proxy(image: str, proxy: FaultProxy) -> str:
    return proxy.host + "/" + image.split("/", 1)[1]


def _blob_bytes(proxy: FaultProxy) -> int:
    return proxy.bytes_served("/blobs/", method="GET")


def test_lazy_rpull_runs_after_fetching_little(lazy_stack: Stack, proxy: FaultProxy,
                                               estargz_image: str) -> None:
    image = _via_proxy(estargz_image, proxy)
    result = lazy_stack.rpull(image)
    assert "2 lazy, 0 downloaded" in result.stdout, lazy_stack.snapshotter.log_text()[-3000:]
    after_pull = _blob_bytes(proxy)
    assert lazy_stack.run(image, "t-lazy", *WORKLOAD) == MOTD + LAYER2_TEXT
    fetched = _blob_bytes(proxy)
    print(f"lazy rpull: {after_pull} blob bytes at pull, {fetched} after the run "
          f"(image holds a {BIG_SIZE}-byte file the run never reads)")
    assert fetched < BIG_SIZE // 4
    # the layers are FUSE directories inside the snapshotter's mount, each reporting progress
    mount = lazy_stack.work / "snap-root" / "fuse"
    assert str(mount) in Path("/proc/self/mountinfo").read_text()
    top = _layer_digests(estargz_image)[-1]
    state = json.loads((mount / layer_dirname(top) / STATE_DIR / f"{top}.json").read_text())
    assert state["digest"] == top and 0 < state["fetchedSize"] < state["size"] // 4


def test_ctr_remote_rpull_with_lazy_layers(lazy_stack: Stack, proxy: FaultProxy,
                                           estargz_image: str) -> None:
    image = _via_proxy(estargz_image, proxy)
    lazy_stack.containerd.ctr("images", "rpull", "--plain-http", image, tool="ctr-remote")
    assert lazy_stack.run(image, "t-ctr-remote", *WORKLOAD) == MOTD + LAYER2_TEXT
    assert _blob_bytes(proxy) < BIG_SIZE // 4


def test_lazy_layers_come_back_after_a_restart(lazy_stack: Stack, proxy: FaultProxy,
                                               estargz_image: str) -> None:
    image = _via_proxy(estargz_image, proxy)
    lazy_stack.rpull(image)
    assert lazy_stack.snapshotter.stop() == 0, lazy_stack.snapshotter.log_text()[-3000:]
    lazy_stack.snapshotter.start()
    out = lazy_stack.containerd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "t-restart", *WORKLOAD)
    assert out == MOTD + LAYER2_TEXT


@pytest.fixture(scope="module", name="wrong_toc_image")
def wrong_toc_image_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The eStargz image again, but its manifest names TOC digests the blobs do not have."""
    layout = tmp_path_factory.mktemp("wrong-toc") / "oci"
    source = build_estargz_layout(layout, [busybox_rootfs_tar(), _layer2_tar(big=False)], "v1",
                                  wrong_toc=True)
    return push(source, registry, "test/wrong-toc:v1")


def test_a_wrong_toc_digest_is_never_mounted(lazy_stack: Stack, proxy: FaultProxy,
                                             wrong_toc_image: str) -> None:
    image = _via_proxy(wrong_toc_image, proxy)
    assert "0 lazy, 2 downloaded" in lazy_stack.rpull(image).stdout
    assert "TOC" in lazy_stack.snapshotter.log_text()  # why it fell back is logged
    assert lazy_stack.run(image, "t-wrong-toc", *WORKLOAD) == MOTD + LAYER2_TEXT


def test_a_plain_gzip_image_is_downloaded(lazy_stack: Stack, proxy: FaultProxy,
                                          image: str) -> None:
    plain = _via_proxy(image, proxy)
    assert "0 lazy, 2 downloaded" in lazy_stack.rpull(plain).stdout
    assert lazy_stack.run(plain, "t-plain", *WORKLOAD) == MOTD + LAYER2_TEXT


def test_removing_the_image_releases_its_layers(lazy_stack: Stack, proxy: FaultProxy,
                                                estargz_image: str) -> None:
    image = _via_proxy(estargz_image, proxy)
    lazy_stack.rpull(image)
    mount = lazy_stack.work / "snap-root" / "fuse"
    names = [layer_dirname(d) for d in _layer_digests(estargz_image)]
    assert all((mount / name / "etc").is_dir() for name in names)
    lazy_stack.containerd.ctr("images", "rm", "--sync", image)
    assert not any((mount / name).exists() for name in names)
    snapshots = lazy_stack.containerd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout
    assert snapshots.splitlines()[1:] == []  # containerd's GC removed them, then we released


def test_the_other_layers_resolve_during_the_first_prepare(lazy_stack: Stack, proxy: FaultProxy,
                                                          estargz_image: str) -> None:
    """While the bottom layer's footer+TOC read is stalled, the top layer's is served: the
    image's other layers (the stargz.layers label) are resolved alongside the first Prepare,
    not after it, and their own Prepares share that resolution (one tail read, whose
    suffix range gives the size too: no HEAD)."""
    bottom, top = _layer_digests(estargz_image)
    proxy.add_fault(Fault("stall", path_contains=bottom, method="GET", only_ranged=True,
                          keep_fraction=0, stall_seconds=5))
    result = lazy_stack.rpull(_via_proxy(estargz_image, proxy))
    assert "2 lazy, 0 downloaded" in result.stdout, lazy_stack.snapshotter.log_text()[-3000:]
    reads = [s.path for s in proxy.served("/blobs/", method="GET") if s.range is not None]
    first_top = next(i for i, path in enumerate(reads) if top in path)
    retried_bottom = max(i for i, path in enumerate(reads) if bottom in path)
    assert first_top < retried_bottom, reads  # served while the bottom's Prepare was stuck
    assert proxy.served(top, method="HEAD") == []
    tails = [s for s in proxy.served(top, method="GET") if (s.range or "").startswith("bytes=-")]
    assert len(tails) == 1


@pytest.mark.slow
def test_python_runs_after_fetching_a_fraction(lazy_stack: Stack, proxy: FaultProxy,
                                               registry: str, tmp_path: Path) -> None:
    """The debootstrap python3 rootfs as one eStargz layer (~70 MB): python3 starts lazily."""
    layout = tmp_path / "python-oci"
    source = build_estargz_layout(layout, [debian_python_rootfs_tar()], "v1")
    image = _via_proxy(push(source, registry, "test/python-estargz:v1"), proxy)
    blob_size = max(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    started = time.monotonic()
    assert "1 lazy" in lazy_stack.rpull(image).stdout
    pulled = time.monotonic()
    out = lazy_stack.run(image, "t-python", "python3", "-c", 'print("hello")')
    ran = time.monotonic()
    assert out == "hello\n"
    fetched = _blob_bytes(proxy)
    print(f"python3 eStargz layer {blob_size} bytes: rpull {pulled - started:.2f} s, "
          f"run {ran - pulled:.2f} s, registry served {fetched} blob bytes "
          f"({100 * fetched / blob_size:.1f} %)")
    assert fetched < blob_size // 2
