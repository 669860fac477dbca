"""`stargz mount --config` reads the one config file as the snapshotter does: the reference's
[resolver] mirrors serve the layers, its metrics_address answers /metrics, and its keys that mean
nothing here (blob.check_always, [fuse]) are accepted with a warning, not refused."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    Mounts,
    mounts_fixture,
    registry_fixture,
)
from tests.integration.test_mount_lazy import image_layers, layouts_fixture  # noqa: F401
from tests.support.faultproxy import FaultProxy
from tests.support.registry import RunningRegistry, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(name="two_proxies")
def two_proxies_fixture(registry: RunningRegistry) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as origin, FaultProxy(host, int(port)) as mirror:
        yield origin, mirror


def test_mount_reads_the_reference_config(mounts: Mounts, layouts: dict[str, Path],
                                          two_proxies: tuple[FaultProxy, FaultProxy],
                                          tmp_path: Path) -> None:
    origin, mirror = two_proxies
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"""
no_background_fetch = true
metrics_address = "127.0.0.1:{port}"
[blob]
check_always = true
[fuse]
attr_timeout = 1
[[resolver.host."{origin.host}".mirrors]]
host = "{mirror.host}"
""")
    mnt = tmp_path / "mnt"
    done = mounts.mount(f"{origin.host}/test/estargz:v1", mnt, "--config", str(config))
    assert "blob.check_always is a key of the reference's" in done.stderr
    assert "fuse.attr_timeout is a key of the reference's" in done.stderr
    assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT
    layers = image_layers(layouts["test/estargz:v1"])
    assert not any(origin.served(layer.digest) for layer in layers)
    assert all(mirror.served(layer.digest, method="GET") for layer in layers)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert all(f'layer="{layer.digest}"' in text for layer in layers)
