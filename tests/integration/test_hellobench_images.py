"""HelloBench's python image (built with debootstrap, cached in the bench cache) and its variants
pushed to a real registry: what the registry holds is byte for byte the layouts the figures come
from, each variant has its media types and annotations, the optimized eStargz puts the files the
workload read before its prefetch landmark, and the lazy variants need a fraction of the bytes.

Conversions go to a fresh variant cache, so every run converts (about 2 minutes with
ctr-remote's optimize); the image itself comes from the bench cache (built once, ~2 minutes).
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import BytesSource
from stargz.estargz.writer import (
    ZSTD_MANIFEST_CHECKSUM_ANNOTATION,
    ZSTD_MANIFEST_POSITION_ANNOTATION,
)
from stargz.hellobench.images import build_images, image_size
from stargz.hellobench.model import VARIANTS, BenchImage, PushedVariant
from stargz.hellobench.oci import blob_path, layout_manifest
from stargz.hellobench.physical import LayerBlob, footer_and_toc_bytes
from stargz.hellobench.variants import RECORD, accessed_by_layer, push_variants
from tests.support.registry import RunningRegistry, run_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers"  # only gates the variant
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module", name="image")
def image_fixture() -> BenchImage:
    return build_images(["python"])["python"]


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module", name="cache")
def cache_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("variant-cache")


@pytest.fixture(scope="module", name="pushed")
def pushed_fixture(image: BenchImage, registry: RunningRegistry, cache: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, PushedVariant]:
    pushed = push_variants({"python": image}, list(VARIANTS), registry.host, peers=PEERS,
                           work=tmp_path_factory.mktemp("work"), cache=cache)
    return {variant.variant: variant for variant in pushed}


def _get(url: str, accept: str = "*/*") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept})) as r:
        data: bytes = r.read()
        return data


def _manifest(registry: RunningRegistry, variant: PushedVariant) -> tuple[bytes, dict[str, Any]]:
    raw = _get(f"http://{registry.host}/v2/{variant.repository}/manifests/{variant.tag}", ACCEPT)
    doc: dict[str, Any] = json.loads(raw)
    return raw, doc


def _blob(registry: RunningRegistry, repository: str, digest: str) -> bytes:
    data = _get(f"http://{registry.host}/v2/{repository}/blobs/{digest}")
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def _opened_layers(registry: RunningRegistry, variant: PushedVariant) -> list[
        tuple[int, VerifiedBlob]]:
    _, manifest = _manifest(registry, variant)
    layers = []
    for layer in manifest["layers"]:
        data = _blob(registry, variant.repository, layer["digest"])
        blob = open_blob(BytesSource(data)).verify(layer["annotations"][TOC_DIGEST])
        layers.append((len(data), blob))
    return layers


def test_the_python_image_is_cached_and_runs_its_workload(image: BenchImage) -> None:
    again = build_images(["python"])["python"]
    assert again == image  # the cached layout, not a second build
    size = image_size(image)
    assert size.layers == 1 and size.compressed_bytes < size.uncompressed_bytes
    _, manifest = layout_manifest(image.layout)
    descriptor = manifest["config"]
    assert isinstance(descriptor, dict)
    config = json.loads(blob_path(image.layout, descriptor["digest"]).read_text())
    assert config["config"]["Cmd"] == list(image.workload.argv)


def test_the_registry_holds_every_variant_as_built(
        registry: RunningRegistry, pushed: dict[str, PushedVariant]) -> None:
    assert list(pushed) == list(VARIANTS)
    for variant in pushed.values():
        raw, manifest = _manifest(registry, variant)
        layers = manifest["layers"]
        total = len(raw) + manifest["config"]["size"] + sum(layer["size"] for layer in layers)
        assert variant.total_bytes == total, variant.variant
        media = {layer["mediaType"] for layer in layers}
        if variant.variant == "gzip":
            assert media == {GZIP} and not any(TOC_DIGEST in layer.get("annotations", {})
                                               for layer in layers)
        elif variant.variant.startswith("zstdchunked"):
            assert media == {ZSTD}
            for layer in layers:
                notes = layer["annotations"]
                assert {TOC_DIGEST, ZSTD_MANIFEST_CHECKSUM_ANNOTATION,
                        ZSTD_MANIFEST_POSITION_ANNOTATION} <= set(notes)
                offset, length, _, _ = notes[ZSTD_MANIFEST_POSITION_ANNOTATION].split(":")
                assert 0 < int(offset) < int(offset) + int(length) < layer["size"]
        else:
            assert media == {GZIP} and all(TOC_DIGEST in layer["annotations"] for layer in layers)


def test_the_optimized_estargz_puts_what_the_workload_read_first(
        registry: RunningRegistry, pushed: dict[str, PushedVariant], cache: Path) -> None:
    optimized = pushed["estargz-optimized"]
    ((_, blob),) = _opened_layers(registry, optimized)
    landmark = blob.prefetch_end()
    assert landmark is not None and landmark > 0
    (record,) = cache.glob(f"variants/python-*/estargz-optimized/{RECORD}")
    read = accessed_by_layer(record)[0]  # the files it opened, all in the one layer
    assert "usr/bin/python3.11" in read
    for path in read:
        entry = blob.lookup(path)
        if entry is not None and entry.type == "reg" and entry.size:
            assert all(chunk.compressed_end <= landmark for chunk in blob.chunks(path)), path
    # a file python3 -c 'print("hello")' never opens sits after the landmark
    assert blob.chunks("usr/lib/python3.11/zipfile.py")[0].compressed_offset >= landmark
    ((_, plain),) = _opened_layers(registry, pushed["estargz"])
    assert plain.prefetch_end() == 0  # .no.prefetch.landmark: nothing to prefetch


def test_lazy_variants_need_a_fraction_of_the_bytes(
        registry: RunningRegistry, pushed: dict[str, PushedVariant]) -> None:
    full = pushed["gzip"]
    assert full.needed_bytes == full.total_bytes and full.round_trips == 3
    for name in ("estargz", "estargz-optimized", "ctr-remote-optimized",
                 "zstdchunked-optimized"):
        lazy = pushed[name]
        tocs = sum(footer_and_toc_bytes(LayerBlob(size, blob))
                   for size, blob in _opened_layers(registry, lazy))
        # the TOCs, plus the python3 binary and the modules it imports (a few MB), no more
        assert tocs < lazy.needed_bytes - 1_000_000, name
        assert lazy.needed_bytes < lazy.total_bytes / 5, name
        assert lazy.round_trips == 4, name
