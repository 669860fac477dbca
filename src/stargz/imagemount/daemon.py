"""The daemon behind ``stargz mount``: serve an image's layers over FUSE, overlay them, wait.

    await serve_image(request, registry, on_ready)

Runs on the caller's event loop until SIGTERM/SIGINT (or until its FUSE mount ends), then
unmounts the overlay and the FUSE mount and removes its state directory. Every call that may
touch the mount runs in a thread: the loop that answers the kernel must never wait on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from stargz.config import Config
from stargz.errors import RuntimeIntegrationError, StargzError
from stargz.fs.mount import LazyFS, first_set, on_stop_signals
from stargz.imagemount.layers import OpenLayer, close_layers, open_image_layers
from stargz.imagemount.state import (
    MountState,
    cleanup,
    mount_overlay,
    unmount_overlay,
)
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.manifest import Platform
from stargz.registry.reference import Reference

log = logging.getLogger(__name__)

FUSE_READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MountRequest:
    image: Reference
    state: MountState
    writable: bool = False
    config: Config = field(default_factory=Config)
    platform: Platform | None = None
    metrics_address: str | None = None
    allow_setuid_and_devices: bool = False  # else every mount is nosuid,nodev


async def serve_image(request: MountRequest, registry: RegistryClient,
                      on_ready: Callable[[list[OpenLayer]], None],
                      stop: anyio.Event | None = None) -> None:
    """Mount ``request.image`` on its mountpoint and serve it until told to stop: SIGTERM or
    SIGINT, or ``stop`` set by the caller (which the signals set too)."""
    state = request.state
    # what the daemon creates (state, log, downloaded blobs, chunk cache) is for root only;
    # files users write through a --rw mount take their own umask, not this one
    os.umask(0o077)
    await anyio.to_thread.run_sync(_prepare, state)
    stop = stop if stop is not None else anyio.Event()
    fs = LazyFS(state.fuse_dir, metrics_address=request.metrics_address,
                allow_setuid_and_devices=request.allow_setuid_and_devices)
    layers: list[OpenLayer] = []
    with on_stop_signals(stop):
        try:
            async with LayerService(request.config, registry) as service:
                try:
                    async with fs.running(FUSE_READY_TIMEOUT_S) as ended:
                        try:
                            layers = await _mount_image(request, registry, service, fs)
                            on_ready(layers)
                            await first_set(stop, ended)
                            if ended.is_set():
                                log.error("the FUSE mount of %s ended; taking the image down",
                                          state.mountpoint)
                        finally:  # the overlay goes before the FUSE mount under it
                            await _unmount_overlay(state)
                finally:
                    await close_layers(service, layers)
        finally:
            await anyio.to_thread.run_sync(cleanup, state)
    log.info("%s unmounted", state.mountpoint)


async def _mount_image(request: MountRequest, registry: RegistryClient, service: LayerService,
                       fs: LazyFS) -> list[OpenLayer]:
    manifest = await registry.get_manifest(request.image, request.platform)
    layers = await open_image_layers(service, registry, request.image, manifest,
                                     request.state.blobs_dir)
    lowerdirs = _add_layers(fs, layers)
    await anyio.to_thread.run_sync(mount_overlay, request.state, lowerdirs, request.writable,
                                   request.allow_setuid_and_devices)
    return layers


async def _unmount_overlay(state: MountState) -> None:
    try:
        await anyio.to_thread.run_sync(unmount_overlay, state)
    except StargzError as err:
        log.error("%s", err)


def _prepare(state: MountState) -> None:
    """Refuse a mountpoint another daemon serves; clear what a dead one left."""
    if not state.mountpoint.is_dir():
        raise RuntimeIntegrationError(f"mountpoint {state.mountpoint} is not a directory")
    pid = state.daemon_pid()
    if pid is not None:
        raise RuntimeIntegrationError(
            f"{state.mountpoint} is already served by stargz daemon {pid}")
    if cleanup(state):
        log.warning("cleaned up a previous mount of %s whose daemon is gone", state.mountpoint)
    state.create()


def _add_layers(fs: LazyFS, layers: list[OpenLayer]) -> list[Path]:
    """Each layer's directory, topmost first as overlayfs wants; a layer repeated in the image
    is served once, at its topmost place."""
    lowerdirs: list[Path] = []
    for layer in reversed(layers):
        path = fs.add_layer(layer.served, layer.dirname)
        if path not in lowerdirs:
            lowerdirs.append(path)
    for layer in layers:
        start = getattr(layer.view, "start", None)
        if callable(start):
            start()
    return lowerdirs
