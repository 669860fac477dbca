"""The one config file: the reference's config.toml as its users write it, our keys beside it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stargz.config import (
    IGNORED_KEYS,
    FileConfig,
    MirrorConfig,
    file_config_from_dict,
    load_file_config,
)
from stargz.configdoc import render
from stargz.errors import ConfigError
from stargz.registry.hosts import HostsConfig

REFERENCE_TOML = """
metrics_address = "127.0.0.1:8234"
no_prometheus = false
debug_address = ""
metadata_store = "memory"
http_cache_type = "memory"
filesystem_cache_type = "memory"
resolve_result_entry_ttl_sec = 60
prefetch_size = 1000
prefetch_timeout_sec = 3
noprefetch = true
no_background_fetch = true
allow_no_verification = true
disable_verification = false
max_concurrency = 4
[blob]
valid_interval = 60
check_always = true
chunk_size = 10000
fetching_timeout_sec = 7
max_retries = 2
min_wait_msec = 10
max_wait_msec = 100
[directory_cache]
direct = true
[fuse]
attr_timeout = 1
entry_timeout = 1
[snapshotter]
allow_invalid_mounts_on_restart = true
[cri_keychain]
enable_keychain = false
[kubeconfig_keychain]
enable_keychain = false
[[resolver.host."docker.io".mirrors]]
host = "mirror.example:5000/base"
insecure = true
request_timeout_sec = 2
[resolver.host."docker.io".mirrors.header]
x-token = "t"
[[resolver.host."docker.io".mirrors]]
host = "second.example"
"""


def test_the_reference_config_is_read_with_its_meaning(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.toml"
    path.write_text(REFERENCE_TOML)
    with caplog.at_level(logging.WARNING, logger="stargz.config"):
        config = load_file_config(path)
    layer = config.layer
    assert (layer.prefetch_size, layer.prefetch_timeout_sec, layer.noprefetch) == (1000, 3.0, True)
    assert (layer.no_background_fetch, layer.allow_no_verification) == (True, True)
    assert (layer.max_concurrency, layer.resolve_result_entry_ttl_sec) == (4, 60.0)
    blob = layer.blob
    assert (blob.chunk_size, blob.fetch_timeout_sec, blob.max_retries) == (10000, 7.0, 2)
    assert (blob.min_wait_msec, blob.max_wait_msec) == (10, 100)
    assert config.daemon.metrics_address == "127.0.0.1:8234"
    assert layer.filesystem_cache_type == "memory" and layer.cache.directory == ""
    assert config.mirrors == {"docker.io": (
        MirrorConfig("mirror.example:5000/base", True, 2.0, (("x-token", "t"),)),
        MirrorConfig("second.example"))}
    ignored = ["debug_address", "metadata_store", "http_cache_type",
               "blob.valid_interval", "blob.check_always", "directory_cache.direct",
               "fuse.attr_timeout", "fuse.entry_timeout",
               "snapshotter.allow_invalid_mounts_on_restart",
               "kubeconfig_keychain.enable_keychain"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(ignored)  # one warning a key
    for key, message in zip(ignored, warned, strict=True):
        assert f"config {path}: {key} is a key of the reference's" in message


def test_mirrors_come_before_the_origin_as_the_reference_reads_them() -> None:
    config = file_config_from_dict({"resolver": {"host": {"reg.example": {"mirrors": [
        {"host": "mirror.example:5000/base", "insecure": True, "request_timeout_sec": 2},
        {"host": "127.0.0.1:6000"}, {"host": "tls.example", "request_timeout_sec": 0}]}}}}, "t")
    hosts = HostsConfig.create(mirrors=config.mirrors)
    endpoints = hosts.endpoints("reg.example")
    assert [e.base_url for e in endpoints] == [
        "http://mirror.example:5000/base/v2", "http://127.0.0.1:6000/v2",
        "https://tls.example/v2", "https://reg.example/v2"]
    assert [e.is_mirror for e in endpoints] == [True, True, True, False]
    assert [e.request_timeout for e in endpoints] == [2.0, 30.0, None, None]
    assert "push" not in endpoints[0].capabilities
    assert hosts.plain_http_allowed("http://mirror.example:5000/v2/")
    assert [e.base_url for e in hosts.endpoints("other.example")] == ["https://other.example/v2"]


@pytest.mark.parametrize(("data", "message"), [
    ({"prefetch_sise": 1}, "unknown config key 'prefetch_sise' in f.toml"),
    ({"blob": {"fetch_timeout": 1}}, "unknown config key 'blob.fetch_timeout' in f.toml"),
    ({"fuse": {"atr_timeout": 1}}, "unknown config key 'fuse.atr_timeout' in f.toml"),
    ({"noprefetch": "yes"}, "config key 'noprefetch' in f.toml must be true or false, not 'yes'"),
    ({"blob": {"max_retries": 1.5}}, "'blob.max_retries' in f.toml must be an integer, not 1.5"),
    ({"resolver": {"host": {"r": {"mirrors": [{"hots": "m"}]}}}},
     "unknown config key 'resolver.host.\"r\".mirrors.hots' in f.toml"),
    ({"resolver": {"host": {"r": {"mirrors": [{"insecure": True}]}}}}, "needs a host"),
    ({"resolver": {"host": {"r": {"mirrors": [{"host": "m", "insecure": 1}]}}}},
     "mirrors.insecure' in f.toml must be true or false, not 1"),
    ({"prefetch_size": 1, "lazy": {"prefetch_size": 2}}, "prefetch_size is set twice"),
    ({"blob": {"min_wait_msec": 10, "max_wait_msec": 5}}, "must be at least"),
])
def test_bad_keys_name_the_key_and_the_file(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        file_config_from_dict(data, "f.toml")


def test_the_older_lazy_table_is_the_top_level() -> None:
    old = file_config_from_dict({"lazy": {"noprefetch": True, "blob": {"chunk_size": 7},
                                          "mountpoint": "/m"}, "blob": {"max_retries": 1}}, "t")
    assert old.layer.noprefetch and old.lazy.mountpoint == "/m"
    assert (old.layer.blob.chunk_size, old.layer.blob.max_retries) == (7, 1)
    # our own spelling of fetching_timeout_sec is still read
    assert file_config_from_dict({"blob": {"fetch_timeout_sec": 3}}, "t").layer.blob \
        .fetch_timeout_sec == 3.0


def test_no_file_is_the_defaults() -> None:
    assert load_file_config(None) == FileConfig()


def test_docs_config_md_is_current() -> None:
    """docs/CONFIG.md is generated from stargz.config: `python -m stargz.configdoc`."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
    assert docs.read_text() == render()
    for key in IGNORED_KEYS:
        assert f"| `{key}` |" in docs.read_text()


def test_min_and_max_wait_are_the_retry_backoff() -> None:
    from stargz.remote.fetcher import retry_policy

    blob = file_config_from_dict({"blob": {"min_wait_msec": 10, "max_wait_msec": 40,
                                           "max_retries": 7}}, "t").layer.blob
    policy = retry_policy(blob)
    assert (policy.initial_backoff, policy.max_backoff, policy.max_retries) == (0.01, 0.04, 7)
    waits = [policy.backoff(attempt, None) for attempt in range(8)]
    assert all(0.005 <= wait <= 0.04 for wait in waits)
    assert max(policy.backoff(6, None) for _ in range(20)) > 0.02  # capped at max, not at min


def test_the_store_reads_the_same_file(tmp_path: Path) -> None:
    from stargz.store.settings import load_settings

    path = tmp_path / "config.toml"
    path.write_text('prefetch_timeout_sec = 4\nmetrics_address = "127.0.0.1:9"\n'
                    '[store]\nroot = "/srv/s"\n'
                    '[[resolver.host."reg.example".mirrors]]\nhost = "m.example"\n')
    settings = load_settings(tmp_path / "mnt", path)
    assert settings.layer.prefetch_timeout_sec == 4.0
    assert settings.metrics_address == "127.0.0.1:9" and settings.root == Path("/srv/s")
    assert settings.mirrors == {"reg.example": (MirrorConfig("m.example"),)}
