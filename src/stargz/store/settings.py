"""The store's settings: the snapshotter's config file (its ``[lazy]`` table: prefetch, fetches,
``[lazy.blob]``, ``[lazy.cache]``, ``[lazy.limits]``, plain HTTP, hosts directory) plus a
``[store]`` table of the store's own keys, and the command line over both.

    [store]
    root = "/var/lib/stargz-store"        # state, blob copies, the chunk cache by default
    authfile = "/run/containers/0/auth.json"   # podman's --authfile; default: podman's own
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stargz.config import Config, read_toml
from stargz.errors import ConfigError
from stargz.snapshotter.lazy import LAZY_TABLE, settings_from_table

STORE_TABLE = "store"
DEFAULT_ROOT = Path("/var/lib/stargz-store")
_STORE_KEYS = frozenset({"root", "authfile"})


@dataclass(frozen=True)
class StoreSettings:
    mountpoint: Path
    root: Path = DEFAULT_ROOT
    layer: Config = field(default_factory=Config)
    hosts_dir: Path | None = None
    insecure_hosts: tuple[str, ...] = ()
    plain_http_localhost: bool = True  # as the reference: registries on loopback
    plain_http_all: bool = False
    authfile: Path | None = None  # None: podman's default places (containers_auth_files)
    metrics_address: str | None = None


def load_settings(mountpoint: Path, config: Path | None = None, *, root: Path | None = None,
                  authfile: Path | None = None, insecure_hosts: tuple[str, ...] = (),
                  plain_http_all: bool = False, hosts_dir: Path | None = None,
                  metrics_address: str | None = None) -> StoreSettings:
    """The config file's settings, the arguments (when given) over them."""
    tables = read_toml(config) if config is not None else {}
    where = str(config) if config is not None else "defaults"
    store = _table(tables, STORE_TABLE, where)
    unknown = sorted(set(store) - _STORE_KEYS)
    if unknown:
        raise ConfigError(f"config {where}: unknown [store] keys: {', '.join(unknown)}")
    root = root.absolute() if root else _absolute(store.get("root", str(DEFAULT_ROOT)),
                                                  "root", where)
    if authfile is None and "authfile" in store:
        authfile = _absolute(store["authfile"], "authfile", where)
    lazy = settings_from_table(_table(tables, LAZY_TABLE, where), root, where)
    if lazy is None:
        raise ConfigError(f"config {where}: [lazy] enabled = false leaves the store nothing "
                          "to serve")
    return StoreSettings(
        mountpoint=mountpoint.absolute(), root=root, layer=lazy.layer,
        hosts_dir=hosts_dir or lazy.hosts_dir,
        insecure_hosts=(*lazy.plain_http, *insecure_hosts),
        plain_http_localhost=lazy.plain_http_localhost, plain_http_all=plain_http_all,
        authfile=authfile.absolute() if authfile is not None else None,
        metrics_address=metrics_address)


def _table(tables: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    table = tables.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config {where}: [{name}] must be a table")
    return table


def _absolute(value: object, key: str, where: str) -> Path:
    path = Path(value) if isinstance(value, str | Path) else None
    if path is None or not path.is_absolute():
        raise ConfigError(f"config {where}: [store] {key} must be an absolute path")
    return path
