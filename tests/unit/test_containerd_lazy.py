"""The lazy RemoteLayers' configuration and label reading, without daemons or FUSE."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from stargz.errors import ConfigError, InvalidArgumentError
from stargz.snapshotter.lazy import (
    LayerSource,
    LazyLayers,
    LazySettings,
    layer_dirname,
    load_lazy,
    settings_from_table,
)
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
    RemoteLayers,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
ROOT = Path("/var/lib/stargz-test")


def test_settings_defaults_and_layer_knobs() -> None:
    settings = settings_from_table({}, ROOT, "t.toml")
    assert settings is not None
    assert settings.mountpoint == ROOT / "fuse" and settings.plain_http == ()
    assert settings.layer.cache.directory == str(ROOT / "cache")
    settings = settings_from_table(
        {"mountpoint": "/mnt/x", "plain_http": ["127.0.0.1:5000"], "hosts_dir": "/etc/h",
         "no_background_fetch": True, "blob": {"chunk_size": 1000}}, ROOT, "t.toml")
    assert settings is not None
    assert settings.mountpoint == Path("/mnt/x") and settings.hosts_dir == Path("/etc/h")
    assert settings.plain_http == ("127.0.0.1:5000",)
    assert settings.layer.no_background_fetch and settings.layer.blob.chunk_size == 1000
    assert settings_from_table({"enabled": False}, ROOT, "t.toml") is None


@pytest.mark.parametrize(("table", "message"), [
    ({"mountpoint": "relative"}, "'mountpoint' .*must be (an absolute path|a string)"),
    ({"hosts_dir": 3}, "'hosts_dir' .*must be (an absolute path|a string)"),
    ({"plain_http": "127.0.0.1:5000"}, "'plain_http' in .* must be a list"),
    ({"enabled": "yes"}, "'enabled' in .* must be true or false"),
    ({"prefetch_sise": 1}, "prefetch_sise"),
])
def test_bad_settings_are_config_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_table(table, ROOT, "t.toml")


def test_load_lazy_reads_the_lazy_table(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[snapshotter]\nroot = "/x"\n')
    for defaults in (load_lazy(config, ROOT), load_lazy(None, ROOT)):  # on unless switched off
        assert isinstance(defaults, LazyLayers)
        assert defaults.settings.mountpoint == ROOT / "fuse"
        assert defaults.settings.plain_http_localhost
        assert defaults.settings.layer.cache.directory == str(ROOT / "cache")
    config.write_text("[lazy]\nenabled = false\n")
    assert load_lazy(config, ROOT) is None
    config.write_text('[lazy]\nmountpoint = "/mnt/lazy"\n')
    lazy = load_lazy(config, ROOT)
    assert isinstance(lazy, LazyLayers) and lazy.settings.mountpoint == Path("/mnt/lazy")
    config.write_text("[lazy\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_lazy(config, ROOT)


def test_layer_source_from_ctr_remote_labels() -> None:
    source = LayerSource.from_labels({
        LABEL_SNAPSHOT_REF: "sha256:chain",
        LABEL_STARGZ_REFERENCE: "127.0.0.1:5000/test/img:v1",
        LABEL_STARGZ_DIGEST: A,
        LABEL_STARGZ_LAYERS: f"{A},{B}",
        LABEL_TOC_DIGEST: B,
    })
    assert str(source.repository.repo_only()) == "127.0.0.1:5000/test/img"
    assert source.repository.tag == "v1"  # finds an external TOC's TOC image (v1-esgztoc)
    assert (source.digest, source.toc_digest, source.image_layers) == (A, B, (A, B))


def test_layer_source_from_cri_labels() -> None:
    source = LayerSource.from_labels({
        LABEL_CRI_IMAGE_REF: "docker.io/library/python:3", LABEL_CRI_LAYER_DIGEST: B,
        LABEL_CRI_IMAGE_LAYERS: B,
    })
    assert str(source.repository.repo_only()) == "docker.io/library/python"
    assert (source.digest, source.toc_digest, source.image_layers) == (B, None, (B,))


def test_layer_source_needs_a_reference_and_digest() -> None:
    with pytest.raises(InvalidArgumentError):
        LayerSource.from_labels({LABEL_STARGZ_DIGEST: A})


def test_layer_directories_have_no_colon() -> None:
    assert layer_dirname(A) == "sha256-" + "a" * 64  # overlayfs splits lowerdirs on ":"


def test_a_layer_without_toc_digest_is_declined(tmp_path: Path) -> None:
    """Nothing is fetched or mounted: the layer could not be verified, so it is downloaded."""
    lazy: RemoteLayers = LazyLayers(LazySettings(mountpoint=tmp_path / "never-mounted"))
    labels = {LABEL_SNAPSHOT_REF: "c", LABEL_STARGZ_REFERENCE: "reg.invalid/x:y",
              LABEL_STARGZ_DIGEST: A}

    async def check() -> None:
        assert isinstance(lazy, LazyLayers)
        try:
            assert await lazy.prepare_remote("k", [], labels) is None
            assert await lazy.restore("c", labels, "/old") is None
        finally:
            await lazy.aclose()

    asyncio.run(check())
    # the daemon's (empty) mount may have been made at start; no layer went into it
    mountpoint = tmp_path / "never-mounted"
    assert not os.path.ismount(mountpoint)
    assert not mountpoint.exists() or not any(mountpoint.iterdir())
