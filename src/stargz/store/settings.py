"""The store's settings: the one config file (``stargz.config``, the snapshotter's: prefetch,
fetches, ``[blob]``, ``[cache]``, ``[limits]``, mirrors, plain HTTP, hosts directory) with its
``[store]`` table of the store's own keys, and the command line over both.

    [store]
    root = "/var/lib/stargz-store"        # state, blob copies, the chunk cache by default
    authfile = "/run/containers/0/auth.json"   # podman's --authfile; default: podman's own
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stargz.config import Config, FileConfig, MirrorConfig, load_file_config
from stargz.errors import ConfigError
from stargz.snapshotter.lazy import settings_from_config

DEFAULT_ROOT = Path(FileConfig().store.root)  # defaults live in stargz.config


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
    mirrors: Mapping[str, tuple[MirrorConfig, ...]] = field(default_factory=dict)


def load_settings(mountpoint: Path, config: Path | None = None, *, root: Path | None = None,
                  authfile: Path | None = None, insecure_hosts: tuple[str, ...] = (),
                  plain_http_all: bool = False, hosts_dir: Path | None = None,
                  metrics_address: str | None = None) -> StoreSettings:
    """The config file's settings (``stargz.config.load_file_config``: the snapshotter's file),
    the arguments (when given) over them."""
    file = load_file_config(config)
    where = str(config) if config is not None else "defaults"
    root = root.absolute() if root else _absolute(file.store.root, "root", where)
    if authfile is None and file.store.authfile:
        authfile = _absolute(file.store.authfile, "authfile", where)
    lazy = settings_from_config(file, root, where)
    if lazy is None:
        raise ConfigError(f"config {where}: enabled = false leaves the store nothing to serve")
    return StoreSettings(
        mountpoint=mountpoint.absolute(), root=root, layer=lazy.layer,
        hosts_dir=hosts_dir or lazy.hosts_dir,
        insecure_hosts=(*lazy.plain_http, *insecure_hosts),
        plain_http_localhost=lazy.plain_http_localhost, plain_http_all=plain_http_all,
        authfile=authfile.absolute() if authfile is not None else None,
        metrics_address=metrics_address or lazy.metrics_address or None,
        mirrors=lazy.mirrors)


def _absolute(value: object, key: str, where: str) -> Path:
    path = Path(value) if isinstance(value, str | Path) else None
    if path is None or not path.is_absolute():
        raise ConfigError(f"config {where}: key 'store.{key}' must be an absolute path, "
                          f"not {value!r}")
    return path
