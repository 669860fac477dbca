"""The daemon behind ``stargz mount``: serve an image's layers over FUSE, overlay them, wait.

    await serve_image(request, registry, on_ready)

Runs on the caller's event loop until SIGTERM/SIGINT (or until its FUSE mount ends), then
unmounts the overlay and the FUSE mount and removes its state directory. Every call that may
touch the mount runs in a thread: the loop that answers the kernel must never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stargz.config import Config
from stargz.errors import RuntimeIntegrationError, StargzError
from stargz.fs.mount import LazyFS
from stargz.imagemount.layers import OpenLayer, close_layers, open_image_layers
from stargz.imagemount.state import (
    MountState,
    cleanup,
    mount_overlay,
    unmount_overlay,
)
from stargz.layer.pool import LayerPool, make_cache
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
                      on_ready: Callable[[list[OpenLayer]], None]) -> None:
    """Mount ``request.image`` on its mountpoint and serve it until told to stop."""
    state = request.state
    # what the daemon creates (state, log, downloaded blobs, chunk cache) is for root only;
    # files users write through a --rw mount take their own umask, not this one
    os.umask(0o077)
    await asyncio.to_thread(_prepare, state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fs = LazyFS(state.fuse_dir, metrics_address=request.metrics_address,
                allow_setuid_and_devices=request.allow_setuid_and_devices)
    serving = await _start_fuse(fs)
    pool = LayerPool(registry, make_cache(request.config), request.config)
    layers: list[OpenLayer] = []
    try:
        manifest = await registry.get_manifest(request.image, request.platform)
        layers = await open_image_layers(pool, request.image, manifest, state.blobs_dir)
        lowerdirs = _add_layers(fs, layers)
        await asyncio.to_thread(mount_overlay, state, lowerdirs, request.writable,
                                request.allow_setuid_and_devices)
        on_ready(layers)
        waiting = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, serving}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if serving.done():
            log.error("the FUSE mount of %s ended; taking the image down", state.mountpoint)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await _shut_down(fs, serving, pool, layers, state)


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


async def _start_fuse(fs: LazyFS) -> asyncio.Task[None]:
    ready = asyncio.Event()
    serving = asyncio.create_task(fs.serve(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, waiter}, timeout=FUSE_READY_TIMEOUT_S,
                       return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if ready.is_set():
        return serving
    if serving.done() and not serving.cancelled():
        error = serving.exception()
        if isinstance(error, StargzError):
            raise error
    serving.cancel()
    raise RuntimeIntegrationError(f"FUSE mount on {fs.mountpoint} did not come up")


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


async def _shut_down(fs: LazyFS, serving: asyncio.Task[None], pool: LayerPool,
                     layers: list[OpenLayer], state: MountState) -> None:
    try:
        await asyncio.to_thread(unmount_overlay, state)
    except StargzError as err:
        log.error("%s", err)
    fs.stop()
    with contextlib.suppress(Exception):
        await serving
    await close_layers(pool, layers)
    await pool.aclose()
    await asyncio.to_thread(cleanup, state)
    log.info("%s unmounted", state.mountpoint)
