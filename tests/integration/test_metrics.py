"""Prometheus metrics under the reference's names and labels, scraped from a real `stargz mount`
after a real lazy read, so dashboards built for containerd-stargz-grpc read ours unchanged."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    Mounts,
    images_fixture,
    mounts_fixture,
    registry_fixture,
)
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type, as Prometheus would parse them."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_reference_metric_names_after_a_lazy_read(registry: RunningRegistry,
                                                  images: dict[str, str], mounts: Mounts,
                                                  tmp_path: Path) -> None:
    port = free_port()
    mnt = tmp_path / "mnt"
    mounts.mount(f"{registry.host}/{images['estargz']}", mnt, "--no-background-fetch",
                 "--metrics-address", f"127.0.0.1:{port}")
    state = mounts.state(mnt)
    layer_dirs = sorted(path for path in state.fuse_dir.iterdir() if path.is_dir())
    assert len(layer_dirs) == 2
    # the second layer's FUSE directory (it holds etc/layer2) and digest (its state file)
    upper = next(d for d in layer_dirs if (d / "etc/layer2").exists())
    [state_file] = (upper / ".stargz-snapshotter").iterdir()
    digest = json.loads(state_file.read_text())["digest"]
    assert (mnt / "etc/layer2").read_bytes() == LAYER2_TEXT  # a lazy read through overlayfs
    sorted(name.name for name in (mnt / "etc").iterdir())  # a readdir of the lower layers

    samples, types = scrape(f"http://127.0.0.1:{port}/metrics")

    # histograms: the reference's names, labels and bucket bounds
    ms = "stargz_fs_operation_duration_milliseconds"
    us = "stargz_fs_operation_duration_microseconds"
    assert types[ms] == types[us] == "histogram"
    for operation in ("mount", "remote_registry_get", "stargz_footer_get", "stargz_toc_get",
                      "stargz_toc_json_deserialize", "prefetch_total"):
        count = value(samples, f"{ms}_count", operation_type=operation, layer=digest)
        assert count is not None and count >= 1, operation
        assert value(samples, f"{ms}_bucket", operation_type=operation, layer=digest,
                     le="16384.0") is not None
    reads = value(samples, f"{us}_count", operation_type="read_on_demand", layer=digest)
    assert reads is not None and reads >= 1
    assert any(name == f"{us}_count" and ("operation_type", "node_readdir") in labels
               for name, labels in samples)
    # counts and bytes keep the reference's names (no _total added)
    assert value(samples, "stargz_fs_operation_count",
                 operation_type="on_demand_read_access_count", layer=digest) == reads
    served = value(samples, "stargz_fs_bytes_served",
                   operation_type="on_demand_bytes_served", layer=digest)
    assert served is not None and served >= len(LAYER2_TEXT)
    fetched = value(samples, "stargz_fs_bytes_served",
                    operation_type="on_demand_bytes_fetched", layer=digest)
    assert fetched is not None and fetched > 0
    fetches = value(samples, "stargz_fs_operation_count",
                    operation_type="on_demand_remote_registry_fetch_count", layer=digest)
    assert fetches is not None and fetches >= 1
    # the reference's per-layer sizes, labelled digest and mountpoint
    size = value(samples, "stargz_fs_layer_size_bytes", digest=digest, mountpoint=str(upper))
    held = value(samples, "stargz_fs_layer_fetched_size_bytes", digest=digest,
                 mountpoint=str(upper))
    assert size is not None and held is not None and 0 < held < size  # lazily: not all of it
    assert value(samples, "stargz_fs_layer_prefetch_size_bytes", digest=digest,
                 mountpoint=str(upper)) is not None
