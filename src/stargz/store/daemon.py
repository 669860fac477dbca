"""The daemon behind ``stargz store MOUNTPOINT``: podman's additional layer store.

    await serve(settings)

One process: the registry client (credentials of the environment, podman's auth.json and the
Docker config), the LayerService with its caches and scheduler, and the store's FUSE mount, on
one event loop until SIGTERM/SIGINT or until the mount ends. The layers podman held when the
last run stopped are restored from the state under the root and pre-resolved, so the same paths
serve the same layers again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio

from stargz import sdnotify
from stargz.errors import ConfigError, RuntimeIntegrationError
from stargz.fs.mount import cleanup_stale, first_set, is_mounted, on_stop_signals
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.credentials import CredentialStore, containers_auth_files
from stargz.registry.hosts import HostsConfig
from stargz.registry.session import warm_up
from stargz.remote.fetcher import retry_policy
from stargz.store.core import StoreCore
from stargz.store.fuse import StoreFS
from stargz.store.images import ImagePool
from stargz.store.layers import StoreLayers
from stargz.store.settings import StoreSettings

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 10.0
MAX_SWEEP_INTERVAL_S = 30.0


def registry_client(settings: StoreSettings) -> RegistryClient:
    if settings.authfile is not None and not settings.authfile.is_file():
        raise ConfigError(f"--authfile {settings.authfile}: no such file")
    credentials = CredentialStore.from_environment(
        auth_files=containers_auth_files(settings.authfile))
    hosts = HostsConfig.create(settings.hosts_dir, settings.insecure_hosts,
                               plain_http_localhost=settings.plain_http_localhost,
                               plain_http_all=settings.plain_http_all,
                               mirrors=settings.mirrors)
    return RegistryClient(hosts, credentials, retry=retry_policy(settings.layer.blob))


def check_mountpoint(mountpoint: Path) -> None:
    """Remove the dead FUSE mount a killed store left (podman refuses to start while it is
    there); refuse a mountpoint a live filesystem covers (another store, say)."""
    cleanup_stale(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        raise RuntimeIntegrationError(f"{mountpoint} is already a mount point")


async def serve(settings: StoreSettings) -> None:
    """Serve the store until told to stop."""
    os.umask(0o077)  # the state, blob copies and chunk cache are root's only
    await anyio.to_thread.run_sync(lambda: settings.root.mkdir(parents=True, exist_ok=True))
    await anyio.to_thread.run_sync(check_mountpoint, settings.mountpoint)
    registry = registry_client(settings)
    stop = anyio.Event()
    with on_stop_signals(stop):
        async with LayerService(settings.layer, registry, owns_registry=True) as service:
            ttl = settings.layer.resolve_result_entry_ttl_sec
            layers = StoreLayers(service, registry, ImagePool(registry, ttl), settings.root, ttl)
            try:
                await layers.restore()
                fs = StoreFS(settings.mountpoint, layers, settings.metrics_address)
                async with fs.running(MOUNT_TIMEOUT_S) as ended:
                    log.info("store serving on %s (state in %s)", settings.mountpoint,
                             settings.root)
                    # ready once a first pull does not pay for the HTTP stack's lazy imports
                    await anyio.to_thread.run_sync(warm_up)
                    sdnotify.notify("READY=1")
                    async with anyio.create_task_group() as group:
                        group.start_soon(_let_go_of_idle_layers, fs.store, ttl)
                        await first_set(stop, ended)
                        group.cancel_scope.cancel()
                    if ended.is_set() and not stop.is_set():
                        log.error("the store's FUSE mount on %s ended", settings.mountpoint)
            finally:
                await layers.close()
    log.info("store on %s stopped", settings.mountpoint)


async def _let_go_of_idle_layers(store: StoreCore, idle_sec: float) -> None:
    interval = min(max(idle_sec / 2, 0.1), MAX_SWEEP_INTERVAL_S)
    while True:
        await anyio.sleep(interval)
        await store.expire()
