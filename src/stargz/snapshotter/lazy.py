"""The lazy RemoteLayers: eStargz layers read from their registry on demand, through one FUSE mount.

A Prepare with remote-snapshot labels names a layer (image reference + layer digest) and its TOC
digest. We open the blob (footer and TOC only, the TOC checked against the digest), add it to the
daemon's FUSE mount and hand back ``<mountpoint>/<layer digest>`` as the overlayfs lowerdir, once
the layer's prefetch is done (at most ``prefetch_timeout_sec``). The image's other layers
(``stargz.layers``) are resolved at the same time, so their Prepares are quick.
Without a TOC digest we decline: the layer can not be verified, so it is downloaded as usual.

Configured by a ``[lazy]`` table in the snapshotter's TOML file (see :func:`load_lazy`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, AsyncExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal

from stargz.config import Config, config_from_dict, read_toml
from stargz.errors import ConfigError, InvalidArgumentError
from stargz.fs.mount import LazyFS
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.credentials import CredentialStore
from stargz.registry.hosts import HostsConfig
from stargz.registry.reference import Reference
from stargz.remote.fetcher import retry_policy
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
)
from stargz.trace import event, span

log = logging.getLogger(__name__)

LAZY_TABLE = "lazy"
MOUNT_DIR = "fuse"  # default mountpoint, inside the snapshotter's root
CACHE_DIR = "cache"  # default chunk cache directory, inside the snapshotter's root
MOUNT_TIMEOUT_S = 10.0
T = TypeVar("T")
_OWN_KEYS = frozenset(
    {"enabled", "mountpoint", "plain_http", "plain_http_localhost", "hosts_dir"}
)


@dataclass(frozen=True)
class LazySettings:
    mountpoint: Path
    plain_http: tuple[str, ...] = ()  # registry hosts spoken to over plain HTTP
    plain_http_localhost: bool = True  # as the reference: registries on loopback are plain HTTP
    hosts_dir: Path | None = None  # containerd-style hosts.toml directory
    layer: Config = field(default_factory=Config)


def settings_from_table(table: Mapping[str, Any], root: Path, where: str) -> LazySettings | None:
    """``[lazy]`` keys: enabled, mountpoint, plain_http, hosts_dir, plus stargz.config's keys
    (prefetch_size, no_background_fetch, [lazy.blob], [lazy.cache], ...). None when disabled."""
    if not isinstance(table.get("enabled", True), bool):
        raise ConfigError(f"{where}: [lazy] enabled must be true or false")
    if not table.get("enabled", True):
        return None
    mountpoint = _abs_path(table.get("mountpoint", str(root / MOUNT_DIR)), "mountpoint", where)
    hosts_dir = table.get("hosts_dir")
    plain_http = table.get("plain_http", [])
    if not isinstance(plain_http, list) or not all(isinstance(h, str) for h in plain_http):
        raise ConfigError(f"{where}: [lazy] plain_http must be a list of host[:port] strings")
    plain_http_localhost = table.get("plain_http_localhost", True)
    if not isinstance(plain_http_localhost, bool):
        raise ConfigError(f"{where}: [lazy] plain_http_localhost must be true or false")
    layer = config_from_dict({k: v for k, v in table.items() if k not in _OWN_KEYS})
    if not layer.cache.directory:  # chunks outlive a restart unless a directory is chosen
        layer = replace(layer, cache=replace(layer.cache, directory=str(root / CACHE_DIR)))
    return LazySettings(
        mountpoint=mountpoint,
        plain_http=tuple(plain_http),
        plain_http_localhost=plain_http_localhost,
        hosts_dir=_abs_path(hosts_dir, "hosts_dir", where) if hosts_dir is not None else None,
        layer=layer,
    )


def _abs_path(value: object, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{where}: [lazy] {key} must be an absolute path")
    return Path(value)


def load_lazy(path: Path | None, root: Path) -> LazyLayers | None:
    """The lazy layers the config file's ``[lazy]`` table asks for, with the defaults when
    there is no file or no table (lazy pulling is what the daemon is for); None only when
    ``[lazy] enabled = false``."""
    if path is None:
        return _lazy_layers({}, root, "defaults")
    table = read_toml(path).get(LAZY_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: [lazy] must be a table")
    return _lazy_layers(table, root, str(path))


def _lazy_layers(table: Mapping[str, Any], root: Path, where: str) -> LazyLayers | None:
    settings = settings_from_table(table, root, where)
    return LazyLayers(settings) if settings is not None else None


@dataclass(frozen=True)
class LayerSource:
    """Where a layer comes from, as the Prepare labels say (ctr-remote's or CRI's names)."""

    repository: Reference
    digest: str
    toc_digest: str | None
    image_layers: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LayerSource:
        reference = labels.get(LABEL_STARGZ_REFERENCE) or labels.get(LABEL_CRI_IMAGE_REF)
        digest = labels.get(LABEL_STARGZ_DIGEST) or labels.get(LABEL_CRI_LAYER_DIGEST)
        layers = labels.get(LABEL_STARGZ_LAYERS) or labels.get(LABEL_CRI_IMAGE_LAYERS) or ""
        if not reference or not digest:
            raise InvalidArgumentError("the labels name no image reference and layer digest")
        return cls(
            repository=Reference.parse(reference).repo_only(),
            digest=digest,
            toc_digest=labels.get(LABEL_TOC_DIGEST) or None,
            image_layers=tuple(d for d in layers.split(",") if d),
        )


class LazyLayers:
    """RemoteLayers whose layers live on a worker thread's event loop (an anyio portal).

    The snapshotter makes blocking filesystem calls (stat of a lowerdir) on its event loop; were
    the FUSE mount served by that same loop, such a call into the mount would wait for itself.
    So the mount and the process's :class:`LayerService` run on the worker's loop, and each
    hook call is handed over to it (``BlockingPortal.call_async``)."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings
        self._starting = anyio.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._mounts_cm: AbstractContextManager[_LazyMounts] | None = None
        self._worker: tuple[BlockingPortal, _LazyMounts] | None = None

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        return await self._call(lambda m: m.prepare_remote(labels))

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        return await self._call(lambda m: m.restore(labels))

    async def release(self, name: str, directory: str) -> None:
        await self._call(lambda m: m.release(directory))

    async def aclose(self) -> None:
        """Unmount, close the layers, stop the worker (the daemon calls this on its way out)."""
        async with self._starting:
            mounts_cm, portal_cm = self._mounts_cm, self._portal_cm
            self._worker = self._mounts_cm = self._portal_cm = None
            if portal_cm is None:
                return

            def stop() -> None:
                try:
                    if mounts_cm is not None:
                        mounts_cm.__exit__(None, None, None)
                finally:
                    portal_cm.__exit__(None, None, None)

            await anyio.to_thread.run_sync(stop)

    async def _call(self, work: Callable[[_LazyMounts], Awaitable[T]]) -> T:
        portal, mounts = await self._started()
        return await portal.call_async(work, mounts)

    async def _started(self) -> tuple[BlockingPortal, _LazyMounts]:
        async with self._starting:
            if self._worker is None:
                self._worker = await anyio.to_thread.run_sync(self._start_worker)
            return self._worker

    def _start_worker(self) -> tuple[BlockingPortal, _LazyMounts]:
        portal_cm = start_blocking_portal(name="stargz-lazy")
        portal = portal_cm.__enter__()
        try:
            mounts_cm = portal.wrap_async_context_manager(_LazyMounts(self.settings))
            mounts = mounts_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        self._portal_cm, self._mounts_cm = portal_cm, mounts_cm
        return portal, mounts


class _LazyMounts:
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
        self._digests: dict[str, str] = {}  # directory name -> layer digest

    async def __aenter__(self) -> _LazyMounts:
        settings = self.settings
        hosts = HostsConfig.create(settings.hosts_dir, insecure_hosts=settings.plain_http,
                                   plain_http_localhost=settings.plain_http_localhost)
        # Credentials as a user's: $STARGZ_USERNAME/$STARGZ_PASSWORD, then the Docker config.
        registry = RegistryClient(hosts, CredentialStore.from_environment(),
                                  retry=retry_policy(settings.layer.blob))
        service = LayerService(settings.layer, registry, owns_registry=True)
        self._service = await self._stack.enter_async_context(service)
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Unmount (the mount's task group goes first), then close the layers and client."""
        if self._fs is not None:
            self._fs.stop()
        await self._stack.aclose()

    @property
    def service(self) -> LayerService:
        assert self._service is not None
        return self._service

    async def prepare_remote(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None:
            log.info("layer %s has no TOC digest label: it can not be verified, declining",
                     source.digest)
            return None
        for digest in source.image_layers:  # resolved alongside this one, for their Prepares
            if digest != source.digest:
                self.service.resolve_soon(source.repository, digest)
        with span("lazy_prepare", layer=source.digest):
            return await self._mount_layer(source, wait_prefetch=True)

    async def restore(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None:
            return None
        return await self._mount_layer(source, wait_prefetch=False)

    async def release(self, directory: str) -> None:
        name = Path(directory).name
        digest = self._digests.get(name, name.replace("-", ":", 1))
        await self.service.release(digest)
        if self.service.uses(digest) == 0:
            self._digests.pop(name, None)
            if self._fs is not None:
                self._fs.remove_layer(name)

    async def _mount_layer(self, source: LayerSource, wait_prefetch: bool) -> str:
        """The layer's directory in the mount; with ``wait_prefetch``, once its prefetch is
        done or ``prefetch_timeout_sec`` passed (the reference's wait before first use)."""
        assert source.toc_digest is not None
        layer = await self.service.acquire(source.repository, source.digest, source.toc_digest,
                                           wait_prefetch=wait_prefetch)
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

    async def _mounted(self) -> LazyFS:
        async with self._mount_lock:
            if self._fs is not None and self._fs_ended is not None and not self._fs_ended.is_set():
                return self._fs
            mountpoint = self.settings.mountpoint
            await anyio.to_thread.run_sync(partial(mountpoint.mkdir, parents=True, exist_ok=True))
            fs = LazyFS(mountpoint)
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


def layer_dirname(digest: str) -> str:
    """The layer's directory in the mount: its digest without the ":" overlayfs splits on."""
    return digest.replace(":", "-")

