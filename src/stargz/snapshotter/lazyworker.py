"""The lazy layers' worker: an event loop on a thread of its own (an anyio BlockingPortal) with
the process's LayerService and the FUSE mount of every lazy layer on it.

Loaded when the worker starts (``LazyLayers.warm_up`` or the first hook call), not with the
snapshotter: pyfuse3 and the registry client take a few hundred milliseconds to import. The
worker is ready once the layer service is: the FUSE mount's modules (pyfuse3 with trio,
prometheus_client) load on a thread behind it, then the (empty) mount is made, and the daemon
tells systemd it is ready (``warmed``). A Prepare that comes sooner starts resolving its layer
(a network wait) while they load, instead of waiting for them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, AsyncExitStack
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal

from stargz.errors import FailedPreconditionError, NotFoundError
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.credentials import CredentialStore
from stargz.registry.hosts import HostsConfig
from stargz.registry.session import warm_up
from stargz.remote.fetcher import retry_policy
from stargz.snapshotter.lazy import LayerSource, LazySettings, layer_dirname
from stargz.trace import event, span

if TYPE_CHECKING:
    from stargz.fs.metrics import FSMetrics
    from stargz.fs.mount import LazyFS
    from stargz.fs.view import LayerView

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 10.0
T = TypeVar("T")


class Worker:
    """The portal thread and the :class:`LazyMounts` living on its loop."""

    def __init__(self, portal_cm: AbstractContextManager[BlockingPortal], portal: BlockingPortal,
                 mounts_cm: AbstractContextManager[LazyMounts], mounts: LazyMounts) -> None:
        self._portal_cm, self._portal = portal_cm, portal
        self._mounts_cm, self.mounts = mounts_cm, mounts

    @classmethod
    def start(cls, settings: LazySettings) -> Worker:
        """Blocks until the loop runs and the LayerService is up."""
        portal_cm = start_blocking_portal(name="stargz-lazy")
        portal = portal_cm.__enter__()
        try:
            mounts_cm = portal.wrap_async_context_manager(LazyMounts(settings))
            mounts = mounts_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        return cls(portal_cm, portal, mounts_cm, mounts)

    async def call(self, work: Callable[[LazyMounts], Awaitable[T]]) -> T:
        """Run ``work`` on the worker's loop, from another event loop."""
        return await self._portal.call_async(work, self.mounts)

    def stop(self) -> None:
        """Blocks until unmounted, the layers closed and the thread gone."""
        try:
            self._mounts_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)


class LazyMounts:
    """The worker's side: the layers of the process's LayerService, served in one FUSE mount
    (mounted at the first Prepare), a directory per layer."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()
        self._service: LayerService | None = None
        self._group: anyio.abc.TaskGroup | None = None  # serves the FUSE mount
        self._fs: LazyFS | None = None
        self._fs_ended: anyio.Event | None = None
        self._mount_lock = anyio.Lock()
        self._closing = False  # set on exit: a mount still to come (the preload's) is not made
        self._digests: dict[str, str] = {}  # directory name -> layer digest
        self.metrics: FSMetrics | None = None  # one set for the process (see __aenter__)
        self.warmed = anyio.Event()  # set once the preload is done: a Prepare waits for nothing

    async def __aenter__(self) -> LazyMounts:
        settings = self.settings
        hosts = HostsConfig.create(settings.hosts_dir, insecure_hosts=settings.plain_http,
                                   plain_http_localhost=settings.plain_http_localhost,
                                   mirrors=settings.mirrors)
        # Credentials as a user's: $STARGZ_USERNAME/$STARGZ_PASSWORD, then the Docker config.
        registry = RegistryClient(hosts, CredentialStore.from_environment(),
                                  retry=retry_policy(settings.layer.blob))
        service = LayerService(settings.layer, registry, owns_registry=True)
        self._service = await self._stack.enter_async_context(service)
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        # loaded while the daemon starts, rather than by the first request or mount
        self._group.start_soon(self._preload)
        if settings.metrics_address:
            # served from the start (as the reference does), so fallbacks and registry
            # timings show before any layer is mounted lazily
            self._metrics().serve(settings.metrics_address)
        return self

    async def _preload(self) -> None:
        """Load the modules, then mount: a first Prepare's footer+TOC fetch then shares the
        process with neither (bench/pull traces: 38-62 ms beside the mount, 10-13 ms after)."""
        try:
            await anyio.to_thread.run_sync(_preload)
            await self._mount_soon()
        except Exception as err:  # met again, and reported, by the Prepare that needs it
            log.warning("loading the FUSE and HTTP modules at start failed: %s", err)
        finally:
            self.warmed.set()

    def _metrics(self) -> FSMetrics:
        if self.metrics is None:
            from stargz.fs.metrics import FSMetrics

            self.metrics = FSMetrics(self._layer_directories)
        return self.metrics

    def _layer_directories(self) -> list[tuple[str, LayerView]]:
        return self._fs.layer_directories() if self._fs is not None else []

    async def __aexit__(self, *exc_info: object) -> None:
        """Unmount (the mount's task group goes first), then close the layers and client."""
        async with self._mount_lock:  # a mount being made (the preload's) is made, then stopped
            self._closing = True
            if self._fs is not None:
                self._fs.stop()
        await self._stack.aclose()

    @property
    def service(self) -> LayerService:
        assert self._service is not None
        return self._service

    async def prepare_remote(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None and self._unverified_reason(source) is None:
            log.info("layer %s has no TOC digest label: it can not be verified, declining",
                     source.digest)
            return None
        if source.urls:  # as the reference: only its content handlers (IPFS) read them
            log.debug("layer %s: remote/urls label %s: no content handler for them here, the "
                      "registry serves the layer", source.digest, ",".join(source.urls))
        for digest in source.image_layers:  # resolved alongside this one, for their Prepares
            if digest != source.digest:
                self.service.resolve_soon(source.repository, digest)
        if self._fs is None and self._group is not None:  # mounted while the layer resolves
            self._group.start_soon(self._mount_soon)
        with span("lazy_prepare", layer=source.digest):  # the container's Prepare waits
            return await self._mount_layer(source, wait_prefetch=False)

    async def restore(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None and self._unverified_reason(source) is None:
            return None
        return await self._mount_layer(source, wait_prefetch=False)

    def _unverified_reason(self, source: LayerSource) -> str | None:
        """Why the layer's TOC may be trusted as served, as the reference decides: never
        checked with disable_verification; without a TOC digest label, only when the Prepare
        says stargz.skipverify and the config allows no verification. None: it may not."""
        if self.settings.layer.disable_verification:
            return "disable_verification is set in the config"
        if source.toc_digest is None and source.skip_verify:
            if self.settings.layer.allow_no_verification:
                return "the stargz.skipverify label, allowed by allow_no_verification"
            log.info("layer %s: the stargz.skipverify label needs allow_no_verification in "
                     "the config", source.digest)
        return None

    async def release(self, directory: str) -> None:
        name = Path(directory).name
        digest = self._digests.get(name, name.replace("-", ":", 1))
        await self.service.release(digest)
        if self.service.uses(digest) == 0:
            self._digests.pop(name, None)
            if self._fs is not None:
                self._fs.remove_layer(name)

    async def check(self, directory: str) -> None:
        """Once the prefetch of the layer at ``directory`` is done, or prefetch_timeout_sec
        passed (the reference's Check before a container uses the layer)."""
        name = Path(directory).name
        digest = self._digests.get(name)
        if digest is None:
            raise NotFoundError(f"no lazy layer is mounted at {directory}")
        with span("prefetch_check", layer=digest):
            done = await self.service.wait_prefetch(digest)
        if not done:
            log.warning("layer %s: prefetch not done after %g s, the container starts anyway",
                        digest, self.settings.layer.prefetch_timeout_sec)

    async def _mount_layer(self, source: LayerSource, wait_prefetch: bool) -> str:
        """The layer's directory in the mount; with ``wait_prefetch``, once its prefetch is
        done or ``prefetch_timeout_sec`` passed (the reference's wait before first use)."""
        reason = self._unverified_reason(source)
        toc_digest = "" if reason is not None else source.toc_digest or ""
        layer = await self.service.acquire(source.repository, source.digest, toc_digest,
                                           wait_prefetch=wait_prefetch, unverified_reason=reason,
                                           prefetch_size=source.prefetch_size)
        try:
            with span("fuse_mount"):
                fs = await self._mounted()
        except BaseException:
            await self.service.release(source.digest)
            raise
        name = layer_dirname(source.digest)
        with span("add_layer", layer=source.digest):
            directory = fs.add_layer(layer, name)
        self._digests[name] = source.digest
        event("mount_ready", layer=source.digest)
        log.info("layer %s mounted lazily at %s", source.digest, directory)
        return str(directory)

    async def _mount_soon(self) -> None:
        try:
            await self._mounted()
        except Exception as err:  # the Prepare's own _mounted() tries again and reports it
            log.debug("early FUSE mount failed: %s", err)

    async def _mounted(self) -> LazyFS:
        async with self._mount_lock:
            if self._closing:
                raise FailedPreconditionError("the lazy layers are shutting down")
            if self._fs is not None and self._fs_ended is not None and not self._fs_ended.is_set():
                return self._fs
            mountpoint = self.settings.mountpoint
            # on a thread: should the preload be importing it, this waits there, not the loop
            mount = await anyio.to_thread.run_sync(_mount_module)
            # a killed daemon's dead mount: stat(2) on it fails with ENOTCONN until unmounted
            await anyio.to_thread.run_sync(mount.cleanup_stale, mountpoint)
            await anyio.to_thread.run_sync(partial(mountpoint.mkdir, parents=True, exist_ok=True))
            fs: LazyFS = mount.LazyFS(mountpoint, metrics=self._metrics())
            assert self._group is not None
            self._fs_ended = await self._group.start(self._keep_mounted, fs)
            self._fs = fs
            return fs

    @staticmethod
    async def _keep_mounted(
        fs: LazyFS, *, task_status: anyio.abc.TaskStatus[anyio.Event] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve ``fs`` until it is stopped or ends (a task of the worker's group)."""
        async with fs.running(MOUNT_TIMEOUT_S) as ended:
            task_status.started(ended)
            await ended.wait()


def _mount_module() -> ModuleType:
    """stargz.fs.mount, with stargz.fs.metrics that its mount needs (see _metrics)."""
    importlib.import_module("stargz.fs.metrics")
    return importlib.import_module("stargz.fs.mount")


def _preload() -> None:
    """What the first Prepare needs after its resolution: the HTTP stack's lazy parts and
    the FUSE mount's modules."""
    with span("startup_preload"):
        warm_up()
        _mount_module()
