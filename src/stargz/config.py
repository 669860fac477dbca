"""The one configuration file of every front end (the snapshotter, ``stargz mount``, the store).

This module is the only place defaults live, and :func:`load_file_config` the one loader. The file
is the reference's config.toml as written for containerd-stargz-grpc (fs keys at the top level,
``[blob]``, ``[directory_cache]``, ``[fuse]``, ``[resolver.host."H".mirrors]``, ``[snapshotter]``,
``[cri_keychain]``, ``[kubeconfig_keychain]``, ``metrics_address`` ...) with the reference's
meaning and defaults, and our own keys beside them (``[cache]``, ``[limits]``, ``[store]``,
``background_quiet_sec`` ...; the older ``[lazy]`` table holds the same top-level keys).

A reference key that means nothing here is accepted with one WARNING naming it and the file
(:data:`IGNORED_KEYS`); an unknown or misspelt key is a ConfigError naming it and the file; a
wrong type names key, value and expected type. docs/CONFIG.md is generated from this module
(``scripts/config-doc``) and a unit test checks it is current.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from stargz.errors import ConfigError

log = logging.getLogger(__name__)

REF = "ref"  # metadata: True for the reference's keys
MEMORY_CACHE = "memory"  # filesystem_cache_type: no disk cache


def _key(default: Any, doc: str, *, ref: bool = False, toml: str | None = None,
         alias: str | None = None) -> Any:
    """A config field: its default, what it does here, whether the reference has it, and its
    TOML name when that differs from the field's (``alias``: a second accepted name)."""
    return field(default=default, metadata={"doc": doc, REF: ref, "toml": toml, "alias": alias})


@dataclass(frozen=True)
class BlobConfig:
    """``[blob]``: how the compressed blob is read from its registry."""

    chunk_size: int = _key(50000, "granularity of registry reads: needs closer than this are "
                           "merged into one range", ref=True)
    max_retries: int = _key(5, "retries of a failed registry request (reset, timeout, 5xx, 429)",
                            ref=True)
    fetch_timeout_sec: float = _key(
        300.0, "one fetch of chunks (all its retries) gives up after this many seconds",
        ref=True, toml="fetching_timeout_sec", alias="fetch_timeout_sec")
    min_wait_msec: int = _key(30, "backoff before the first retry; doubles each retry",
                              ref=True)
    max_wait_msec: int = _key(300000, "longest backoff between retries", ref=True)


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: caches of verified, uncompressed chunks."""

    memory_limit_bytes: int = _key(64 << 20, "memory chunk cache bound")
    directory: str = _key("", "disk chunk cache directory (the snapshotter's and the store's: "
                          "<root>/cache when empty; stargz mount: none when empty)")
    disk_limit_bytes: int = _key(10 << 30, "disk chunk cache bound")
    verify_on_read: bool = _key(True, "re-hash disk chunks when read back")


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: what one blob may cost this host. A blob beyond any limit is refused with
    one TOCError when its TOC is opened, before any file data is fetched or decompressed. Real
    images stay far below every default; a hostile one can not use more than about this much."""

    # The largest real TOC we know of is ~92 MB (~300,000 files); ours is ~340 bytes a regular
    # file. Opening a TOC at the limit costs about 2x its size in memory.
    max_toc_bytes: int = _key(256 << 20, "decompressed TOC JSON bound")
    max_toc_entries: int = _key(1_000_000, "TOC entries plus the directories they imply")
    # Writers chunk at 4 MiB (ours, ctr-remote, the Go library) and pack small files into
    # members of about that size; 64 MiB leaves 16x headroom. An unchunked file (old stargz)
    # is one chunk: such files over the limit are refused.
    max_chunk_bytes: int = _key(64 << 20, "decompressed bytes needed to verify one chunk "
                                "(doubled: compressed bytes of its member)")
    max_path_depth: int = _key(256, "components in one path")
    max_path_bytes: int = _key(4096, "bytes of one path (PATH_MAX)")


@dataclass(frozen=True)
class Config:
    """Everything a layer needs to know about fetching, verifying and caching (the top-level
    fs keys and the ``[blob]``, ``[cache]``, ``[limits]`` tables)."""

    prefetch_size: int = _key(0, "bytes prefetched when a blob has no landmark (the "
                              "stargz.prefetch label overrides it per layer)", ref=True)
    prefetch_timeout_sec: float = _key(10.0, "a Prepare waits at most this long for the "
                                       "layer's prefetch", ref=True)
    noprefetch: bool = _key(False, "no prefetch at all (landmark, prefetch_size, label)",
                            ref=True)
    no_background_fetch: bool = _key(False, "no fetch of the whole layer in the background",
                                     ref=True)
    max_concurrency: int = _key(2, "background fetches at once, across the whole daemon",
                                ref=True)
    disable_verification: bool = _key(
        False, "TOC digests are not checked (WARNING per layer); chunks are still checked "
        "against the TOC", ref=True)
    allow_no_verification: bool = _key(
        False, "a layer without TOC digest label is mounted when its Prepare carries the "
        "stargz.skipverify label (WARNING per layer)", ref=True)
    filesystem_cache_type: str = _key(
        "", '"memory": verified chunks are cached in memory only (no disk cache, whatever '
        "[cache] directory says); other values: in memory and on disk", ref=True)
    background_batch_bytes: int = _key(1 << 20, "compressed bytes per background request")
    background_quiet_sec: float = _key(
        5.0, "background fetches start once no prioritized work ran for this long "
        "(the reference's fixed 5 s)")
    resolve_result_entry: int = _key(30, "resolved layers no mount uses kept (LRU) for a "
                                     "re-Prepare", ref=True)
    resolve_result_entry_ttl_sec: float = _key(120.0, "... each for at most this long",
                                               ref=True)
    blob: BlobConfig = field(default_factory=BlobConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass(frozen=True)
class DaemonConfig:
    """Top-level keys of the daemons (the snapshotter, the store)."""

    metrics_address: str = _key("", "HOST:PORT where /metrics (Prometheus) is served, by the "
                                "snapshotter once its FUSE mount is up; empty: none", ref=True)
    no_prometheus: bool = _key(False, "metrics_address is not served", ref=True)


@dataclass(frozen=True)
class LazyConfig:
    """Our top-level keys of the lazy layers (also accepted in the older ``[lazy]`` table)."""

    enabled: bool = _key(True, "false: the snapshotter never mounts lazily (plain overlayfs)")
    mountpoint: str = _key("", "the FUSE mount of the snapshotter's lazy layers "
                           "(empty: <root>/fuse)")
    plain_http: tuple[str, ...] = _key((), "registry hosts spoken to over plain HTTP")
    plain_http_localhost: bool = _key(True, "registries on loopback are plain HTTP (as the "
                                      "reference)")
    hosts_dir: str = _key("", "containerd-style hosts.toml directory (mirrors, CAs)")


@dataclass(frozen=True)
class SnapshotterConfig:
    """``[snapshotter]``: the snapshotter daemon's own keys (command-line flags win)."""

    address: str = _key("/run/stargz/stargz.sock", "unix socket containerd's proxy plugin "
                        "dials")
    root: str = _key("/var/lib/stargz", "state directory (metadata, snapshots, cache)")
    log_level: str = _key("info", "trace, debug, info, warn, warning, error, fatal, panic")


@dataclass(frozen=True)
class CriKeychainConfig:
    """``[cri_keychain]``: serve the CRI ImageService and keep kubelet's pull credentials."""

    enable_keychain: bool = _key(False, "serve the CRI ImageService on the snapshotter's socket "
                                 "(kubelet's --image-service-endpoint), forward it to "
                                 "image_service_path, keep each pull's credentials for its "
                                 "lazy layers", ref=True)
    image_service_path: str = _key("/run/containerd/containerd.sock", "containerd's CRI "
                                   "socket the ImageService calls are forwarded to", ref=True)


@dataclass(frozen=True)
class FuseManagerConfig:
    """``[fuse_manager]``: lazy layers served by ``stargz fuse-manager``, outliving the
    snapshotter (stopped, killed, upgraded)."""

    enable: bool = _key(False, "the snapshotter hands its lazy layers to the FUSE manager at "
                        "address instead of mounting them itself", ref=True)
    address: str = _key("/run/stargz/fuse-manager.sock", "the FUSE manager's unix socket",
                        ref=True)
    path: str = _key("", "not used: the FUSE manager is started by its own unit", ref=True)


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the podman store's own keys (command-line flags win)."""

    root: str = _key("/var/lib/stargz-store", "state, blob copies, the chunk cache")
    authfile: str = _key("", "podman's --authfile (empty: podman's own places)")


@dataclass(frozen=True)
class MirrorConfig:
    """One ``[[resolver.host."H".mirrors]]`` entry, tried in order before the host itself."""

    host: str = _key("", "the mirror, host[:port][/path]", ref=True)
    insecure: bool = _key(False, "plain HTTP (loopback is plain HTTP anyway)", ref=True)
    request_timeout_sec: float = _key(30.0, "per request; 0: the default, negative: none",
                                      ref=True)
    header: tuple[tuple[str, str], ...] = _key((), "headers sent to the mirror", ref=True)


@dataclass(frozen=True)
class FileConfig:
    """A whole config file."""

    layer: Config = field(default_factory=Config)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    lazy: LazyConfig = field(default_factory=LazyConfig)
    snapshotter: SnapshotterConfig = field(default_factory=SnapshotterConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mirrors: Mapping[str, tuple[MirrorConfig, ...]] = field(default_factory=dict)
    cri_keychain: CriKeychainConfig = field(default_factory=CriKeychainConfig)
    fuse_manager: FuseManagerConfig = field(default_factory=FuseManagerConfig)


# The reference's keys that mean nothing here: accepted with one WARNING each. Name -> (the
# reference's default, why it means nothing here).
IGNORED_KEYS: dict[str, tuple[object, str]] = {
    "http_cache_type": ("", "no cache of compressed bytes: verified chunks go to [cache]"),
    "http_cache_chunk_ttl_sec": (0, "no cache of compressed bytes"),
    "prefetch_async_size": (0, "a Prepare waits for the prefetch up to prefetch_timeout_sec"),
    "debug": (False, "use --log-level debug"),
    "log_file_access": (False, "use --log-level debug"),
    "debug_address": ("", "no debug endpoints"),
    "metadata_store": ("memory", "TOCs are kept in memory, checked chunks in [cache]"),
    "ipfs": (False, "no IPFS"),
    "blob.valid_interval": (60, "each request is checked and retried, mirrors in turn"),
    "blob.check_always": (False, "each request is checked and retried, mirrors in turn"),
    "blob.force_single_range_mode": (False, "multi-range answers are handled either way"),
    "blob.prefetch_chunk_size": (0, "prefetch goes in background_batch_bytes requests"),
    "directory_cache.max_lru_cache_entry": (10, "the disk cache is [cache]"),
    "directory_cache.max_cache_fds": (10, "the disk cache is [cache]"),
    "directory_cache.sync_add": (False, "the disk cache is [cache], written behind"),
    "directory_cache.direct": (True, "the disk cache is [cache]"),
    "directory_cache.fadv_dontneed": (False, "the disk cache is [cache]"),
    "fuse.attr_timeout": (1, "layers are immutable: the kernel caches attributes long"),
    "fuse.entry_timeout": (1, "layers are immutable: the kernel caches entries long"),
    "fuse.passthrough": (False, "no FUSE passthrough"),
    "fuse.merge_buffer_size": (419430400, "no FUSE passthrough"),
    "fuse.merge_worker_count": (10, "no FUSE passthrough"),
    "snapshotter.allow_invalid_mounts_on_restart": (
        False, "a snapshot not restored on restart is marked unavailable; the daemon starts"),
    "kubeconfig_keychain.enable_keychain": (False, "no Kubernetes secrets keychain"),
    "kubeconfig_keychain.kubeconfig_path": ("", "no Kubernetes secrets keychain"),
}

# Tables and the dataclasses holding their keys ("" is the top level).
SECTIONS: dict[str, tuple[type[Any], ...]] = {
    "": (Config, DaemonConfig, LazyConfig),
    "blob": (BlobConfig,),
    "cache": (CacheConfig,),
    "limits": (LimitsConfig,),
    "snapshotter": (SnapshotterConfig,),
    "store": (StoreConfig,),
    "cri_keychain": (CriKeychainConfig,),
    "fuse_manager": (FuseManagerConfig,),
}
_IGNORED_TABLES = frozenset(k.split(".")[0] for k in IGNORED_KEYS if "." in k) - set(SECTIONS)
_LAZY_TABLE = "lazy"  # older layout: the top-level keys in a table of their own
_TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number",
               "str": "a string", "tuple[str, ...]": "a list of strings"}


def toml_name(item: Field[Any]) -> str:
    return str(item.metadata.get("toml") or item.name)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; an unreadable or invalid file is one ConfigError."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from None


def load_file_config(path: str | Path | None) -> FileConfig:
    """The one loader: a config file (None: the defaults) for every front end."""
    if path is None:
        return FileConfig()
    return file_config_from_dict(read_toml(path), str(path))


def load_config(path: str | Path) -> Config:
    """The layer settings of a config file; any problem is one ConfigError."""
    return load_file_config(path).layer


def parse_config(text: str) -> Config:
    """The layer settings of TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config is not valid TOML: {err}") from None
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any], where: str = "text") -> Config:
    return file_config_from_dict(data, where).layer


def file_config_from_dict(data: Mapping[str, Any], where: str) -> FileConfig:
    """Build a FileConfig from parsed TOML, checking names, types and ranges."""
    reader = _Reader(where)
    mirrors: dict[str, tuple[MirrorConfig, ...]] = {}
    for key, value in _merge_lazy(data, where).items():
        if key == "resolver":
            mirrors = _resolver(value, where)
        elif key in SECTIONS or key in _IGNORED_TABLES:
            for name, item in _table(value, key, where).items():
                reader.take(key, name, item)
        else:
            reader.take("", key, value)
    layer = reader.build(Config, blob=reader.build(BlobConfig), cache=reader.build(CacheConfig),
                         limits=reader.build(LimitsConfig))
    if layer.filesystem_cache_type == MEMORY_CACHE:  # the reference's: no disk cache at all
        layer = replace(layer, cache=replace(layer.cache, directory=""))
    config = FileConfig(layer, reader.build(DaemonConfig), reader.build(LazyConfig),
                        reader.build(SnapshotterConfig), reader.build(StoreConfig), mirrors,
                        cri_keychain=reader.build(CriKeychainConfig),
                        fuse_manager=reader.build(FuseManagerConfig))
    _check_ranges(config.layer, where)
    return config


class _Reader:
    """Sorts a file's keys into their dataclasses' arguments, typed; warns for ignored keys."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.values: dict[type[Any], dict[str, Any]] = {}

    def take(self, section: str, key: str, value: Any) -> None:
        dotted = f"{section}.{key}" if section else key
        for kind in SECTIONS.get(section, ()):
            for item in fields(kind):
                names = (toml_name(item), item.metadata.get("alias"))
                if key in names and item.metadata.get("doc") is not None:
                    typed = _typed(item.type, value, dotted, self.where)
                    self.values.setdefault(kind, {})[item.name] = typed
                    return
        if dotted in IGNORED_KEYS:
            log.warning("config %s: %s is a key of the reference's that means nothing here "
                        "(%s): ignored", self.where, dotted, IGNORED_KEYS[dotted][1])
            return
        raise ConfigError(f"unknown config key {dotted!r} in {self.where}")

    def build(self, kind: type[Any], **tables: Any) -> Any:
        return kind(**self.values.get(kind, {}), **tables)


def _merge_lazy(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``[lazy]`` table's keys (and its blob/cache/limits tables) moved to the top level."""
    merged = {k: v for k, v in data.items() if k != _LAZY_TABLE}
    for key, value in _table(data.get(_LAZY_TABLE, {}), _LAZY_TABLE, where).items():
        if key in SECTIONS and isinstance(value, dict):
            top = dict(_table(merged.get(key, {}), key, where))
            for name in value:
                if name in top:
                    raise ConfigError(f"config {where}: {key}.{name} is set twice, in [{key}] "
                                      f"and in [lazy.{key}]")
            merged[key] = {**top, **value}
        elif key in merged:
            raise ConfigError(f"config {where}: {key} is set twice, at the top level and in "
                              "[lazy]")
        else:
            merged[key] = value
    return merged


def _table(value: Any, name: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {name!r} in {where} must be a table, not {value!r}")
    return value


def _typed(type_name: object, value: Any, name: str, where: str) -> Any:
    # Annotations are strings under `from __future__ import annotations`.
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "tuple[str, ...]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[str(type_name)]
    if not ok:
        expected = _TYPE_NAMES[str(type_name)]
        raise ConfigError(f"config key {name!r} in {where} must be {expected}, not {value!r}")
    if type_name == "float":
        return float(value)
    return tuple(value) if isinstance(value, list) else value


def _resolver(value: Any, where: str) -> dict[str, tuple[MirrorConfig, ...]]:
    """``[resolver.host."H"]`` tables, each with ``[[...mirrors]]``."""
    resolver = _table(value, "resolver", where)
    for key in resolver:
        if key != "host":
            raise ConfigError(f"unknown config key 'resolver.{key}' in {where}")
    out: dict[str, tuple[MirrorConfig, ...]] = {}
    for host, spec in _table(resolver.get("host", {}), "resolver.host", where).items():
        prefix = f'resolver.host."{host}"'
        spec = _table(spec, prefix, where)
        for key in spec:
            if key != "mirrors":
                raise ConfigError(f"unknown config key '{prefix}.{key}' in {where}")
        mirrors = spec.get("mirrors", [])
        if not isinstance(mirrors, list):
            raise ConfigError(f"config {where}: {prefix}.mirrors must be an array of tables "
                              f"([[{prefix}.mirrors]]), not {mirrors!r}")
        out[host] = tuple(_mirror(m, f"{prefix}.mirrors", where) for m in mirrors)
    return out


def _mirror(value: Any, prefix: str, where: str) -> MirrorConfig:
    spec = dict(_table(value, prefix, where))
    header = _table(spec.pop("header", {}), f"{prefix}.header", where)
    kwargs: dict[str, Any] = {}
    known = {item.name: item for item in fields(MirrorConfig) if item.name != "header"}
    for key, item in spec.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{prefix}.{key}' in {where}")
        kwargs[key] = _typed(known[key].type, item, f"{prefix}.{key}", where)
    if not kwargs.get("host"):
        raise ConfigError(f"config {where}: every {prefix} entry needs a host")
    pairs: list[tuple[str, str]] = []
    for name, item in header.items():
        items = item if isinstance(item, list) else [item]
        if not all(isinstance(v, str) for v in items):
            raise ConfigError(f"config {where}: key '{prefix}.header.{name}' must be a string "
                              f"or a list of strings, not {item!r}")
        pairs.extend((name, v) for v in items)
    return MirrorConfig(**kwargs, header=tuple(pairs))


def _check_ranges(config: Config, where: str) -> None:
    positive = {
        "max_concurrency": config.max_concurrency,
        "background_batch_bytes": config.background_batch_bytes,
        "blob.chunk_size": config.blob.chunk_size,
        "blob.fetching_timeout_sec": config.blob.fetch_timeout_sec,
        **{f"limits.{f.name}": getattr(config.limits, f.name) for f in fields(config.limits)},
    }
    not_negative = {
        "prefetch_size": config.prefetch_size,
        "prefetch_timeout_sec": config.prefetch_timeout_sec,
        "background_quiet_sec": config.background_quiet_sec,
        "resolve_result_entry": config.resolve_result_entry,
        "resolve_result_entry_ttl_sec": config.resolve_result_entry_ttl_sec,
        "blob.max_retries": config.blob.max_retries,
        "blob.min_wait_msec": config.blob.min_wait_msec,
        "cache.memory_limit_bytes": config.cache.memory_limit_bytes,
        "cache.disk_limit_bytes": config.cache.disk_limit_bytes,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {name!r} in {where} must be positive, not {value}")
    for name, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"config key {name!r} in {where} must not be negative, not {value}")
    if config.blob.max_wait_msec < config.blob.min_wait_msec:
        raise ConfigError(f"config {where}: key 'blob.max_wait_msec' must be at least "
                          f"blob.min_wait_msec ({config.blob.min_wait_msec}), not "
                          f"{config.blob.max_wait_msec}")


def with_cache_directory(config: Config, directory: Path) -> Config:
    """``config`` with its disk cache in ``directory`` unless the file chose one or none
    (``filesystem_cache_type = "memory"``)."""
    if config.cache.directory or config.filesystem_cache_type == MEMORY_CACHE:
        return config
    return replace(config, cache=replace(config.cache, directory=str(directory)))


def default_of(item: Field[Any]) -> Any:
    """A field's default (its factory's product for tables)."""
    if item.default is not MISSING:
        return item.default
    assert item.default_factory is not MISSING
    return item.default_factory()
