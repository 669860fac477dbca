"""The layer config: reference defaults, TOML loading, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.config import BlobConfig, CacheConfig, Config, load_config, parse_config
from stargz.errors import ConfigError


def test_defaults_are_the_reference_defaults() -> None:
    config = Config()
    assert config.prefetch_timeout_sec == 10
    assert config.no_background_fetch is False
    assert config.max_concurrency == 2
    assert config.prefetch_size == 0
    assert config.blob == BlobConfig(chunk_size=50000, max_retries=5, fetch_timeout_sec=300.0)
    assert config.cache.directory == "" and config.cache.verify_on_read is True
    assert parse_config("") == config


def test_toml_file_sets_values(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "prefetch_timeout_sec = 3\nno_background_fetch = true\nmax_concurrency = 4\n"
        "[blob]\nchunk_size = 100000\nfetch_timeout_sec = 2.5\n"
        "[cache]\ndirectory = '/var/cache/x'\ndisk_limit_bytes = 1024\n"
    )
    config = load_config(path)
    assert config.prefetch_timeout_sec == 3.0 and isinstance(config.prefetch_timeout_sec, float)
    assert config.no_background_fetch and config.max_concurrency == 4
    assert config.blob == BlobConfig(chunk_size=100000, max_retries=5, fetch_timeout_sec=2.5)
    assert config.cache == CacheConfig(directory="/var/cache/x", disk_limit_bytes=1024)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prefetch_timeout = 3", "unknown config key 'prefetch_timeout'"),
        ("[blob]\nchunksize = 3", "unknown config key 'blob.chunksize'"),
        ("[nope]\na = 1", "unknown config key 'nope'"),
        ("blob = 3", "'blob' in text must be a table"),
        ("max_concurrency = 'two'", "must be an integer"),
        ("max_concurrency = true", "must be an integer"),
        ("no_background_fetch = 1", "must be true or false"),
        ("[cache]\ndirectory = 5", "must be a string"),
        ("max_concurrency = 0", "must be positive"),
        ("[blob]\nchunk_size = -1", "must be positive"),
        ("prefetch_size = -1", "must not be negative"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_is_one_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")
