"""Configuration of lazily pulled layers, loaded from TOML.

This module is the only place defaults live. The names and defaults follow the reference
snapshotter (see spec RUNTIMES.md): top-level fetch/prefetch knobs, a ``[blob]`` table for
registry reads, a ``[cache]`` table for the chunk caches and a ``[limits]`` table for what one
blob may cost (hostile-input bounds). Unknown keys are refused so a
typo never silently turns a feature off.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stargz.errors import ConfigError


@dataclass(frozen=True)
class BlobConfig:
    """How the compressed blob is read from its registry."""

    chunk_size: int = 50000  # granularity: needs closer than this are merged into one range
    max_retries: int = 5
    fetch_timeout_sec: float = 300.0  # one fetch (all its retries) gives up after this


@dataclass(frozen=True)
class CacheConfig:
    """Caches of verified, uncompressed chunks."""

    memory_limit_bytes: int = 64 << 20
    directory: str = ""  # empty: no disk cache
    disk_limit_bytes: int = 10 << 30
    verify_on_read: bool = True  # re-hash disk chunks when read back (cheap next to decompression)


@dataclass(frozen=True)
class LimitsConfig:
    """What one blob may cost this host. A blob beyond any limit is refused with one TOCError
    when its TOC is opened, before any file data is fetched or decompressed. Real images stay
    far below every default; a hostile one can not use more than about this much."""

    # Decompressed TOC JSON. The largest real TOC we know of is ~92 MB (~300,000 files, which
    # made containers/storage raise its zstd:chunked limit to 150 MB); ours is ~340 bytes a
    # regular file. Opening a TOC at the limit costs about 2x its size in memory.
    max_toc_bytes: int = 256 << 20
    # Entries in the TOC plus the directories they imply (parents the TOC does not list).
    max_toc_entries: int = 1_000_000
    # Decompressed bytes needed to verify one chunk (its offset in its gzip member / zstd
    # frame plus its size) and, doubled, the compressed bytes of that member. Writers chunk
    # at 4 MiB (ours, ctr-remote, the Go library), and pack small files into members of
    # about that size; 64 MiB leaves 16x headroom. A file stored as one unchunked member
    # (old stargz) is one chunk: such files over the limit are refused.
    max_chunk_bytes: int = 64 << 20
    # Components in one path. Real images nest a few dozen deep at most.
    max_path_depth: int = 256
    # Bytes of one path (Linux PATH_MAX).
    max_path_bytes: int = 4096


@dataclass(frozen=True)
class Config:
    """Everything a layer needs to know about fetching and caching."""

    prefetch_size: int = 0  # bytes prefetched when a blob has no landmark
    prefetch_timeout_sec: float = 10.0
    no_background_fetch: bool = False
    max_concurrency: int = 2  # background fetches at once, across the whole daemon
    background_batch_bytes: int = 1 << 20  # compressed bytes per background request
    # background fetches start once no prioritized work (on-demand fetch, prefetch, layer
    # resolution) has run anywhere in the daemon for this long (the reference's fixed 5 s)
    background_quiet_sec: float = 5.0
    resolve_result_entry: int = 30  # layers no mount uses kept resolved (LRU), for a re-Prepare
    resolve_result_entry_ttl_sec: float = 120.0  # ... and for at most this long
    blob: BlobConfig = field(default_factory=BlobConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


_TABLES: dict[str, type[Any]] = {"blob": BlobConfig, "cache": CacheConfig, "limits": LimitsConfig}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; an unreadable or invalid file is one ConfigError."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from None


def load_config(path: str | Path) -> Config:
    """Read a TOML file into a Config; any problem is one ConfigError."""
    return config_from_dict(read_toml(path))


def parse_config(text: str) -> Config:
    """Parse TOML text into a Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config is not valid TOML: {err}") from None
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from already parsed TOML, checking names, types and ranges."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} must be a table")
            values[key] = _build(_TABLES[key], value, f"{key}.")
        else:
            values[key] = value
    tops = {k: v for k, v in values.items() if k not in _TABLES}
    config: Config = _build(Config, tops, "")
    for key in _TABLES:
        if key in values:
            config = _replace(config, key, values[key])
    _check_ranges(config)
    return config


def _replace(config: Config, key: str, value: Any) -> Config:
    kwargs = {f.name: getattr(config, f.name) for f in fields(config)}
    kwargs[key] = value
    return Config(**kwargs)


def _build(kind: type[Any], data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(kind) if f.name not in _TABLES}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{prefix}{key}'")
        kwargs[key] = _typed(known[key].type, value, prefix + key)
    return kind(**kwargs)


def _typed(type_name: object, value: Any, name: str) -> Any:
    # Annotations are strings under `from __future__ import annotations`.
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be true or false, not {value!r}")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, not {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {name!r} must be a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config key {name!r} must be a string, not {value!r}")
    return value


def _check_ranges(config: Config) -> None:
    positive = {
        "max_concurrency": config.max_concurrency,
        "background_batch_bytes": config.background_batch_bytes,
        "blob.chunk_size": config.blob.chunk_size,
        "blob.fetch_timeout_sec": config.blob.fetch_timeout_sec,
        **{f"limits.{f.name}": getattr(config.limits, f.name) for f in fields(config.limits)},
    }
    not_negative = {
        "prefetch_size": config.prefetch_size,
        "prefetch_timeout_sec": config.prefetch_timeout_sec,
        "background_quiet_sec": config.background_quiet_sec,
        "resolve_result_entry": config.resolve_result_entry,
        "resolve_result_entry_ttl_sec": config.resolve_result_entry_ttl_sec,
        "blob.max_retries": config.blob.max_retries,
        "cache.memory_limit_bytes": config.cache.memory_limit_bytes,
        "cache.disk_limit_bytes": config.cache.disk_limit_bytes,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {name!r} must be positive, not {value}")
    for name, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"config key {name!r} must not be negative, not {value}")
