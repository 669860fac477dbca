"""The lazy RemoteLayers: eStargz layers read from their registry on demand, through one FUSE mount.

A Prepare with remote-snapshot labels names a layer (image reference + layer digest) and its TOC
digest. We open the blob (footer and TOC only, the TOC checked against the digest), add it to the
daemon's FUSE mount and hand back ``<mountpoint>/<layer digest>`` as the overlayfs lowerdir at once;
the layer's prefetch goes on, and the container's Prepare on top waits for it (:meth:`check`, at
most ``prefetch_timeout_sec``), as the reference does. The image's other layers
(``stargz.layers``) are resolved at the same time, so their Prepares are quick.
Without a TOC digest we decline: the layer can not be verified, so it is downloaded as usual.

Configured by a ``[lazy]`` table in the snapshotter's TOML file (see :func:`load_lazy`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stargz.config import (
    Config,
    FileConfig,
    MirrorConfig,
    file_config_from_dict,
    load_file_config,
    with_cache_directory,
)
from stargz.errors import ConfigError, InvalidArgumentError
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_PREFETCH,
    LABEL_STARGZ_REFERENCE,
    LABEL_STARGZ_SKIP_VERIFY,
    LABEL_TOC_DIGEST,
    LABEL_URLS,
)
from stargz.trace import span

if TYPE_CHECKING:
    from stargz.registry.reference import Reference
    from stargz.snapshotter.fusemanager import ManagedLazyLayers
    from stargz.snapshotter.lazyworker import LazyMounts, Worker

log = logging.getLogger(__name__)

LAZY_TABLE = "lazy"
MOUNT_DIR = "fuse"  # default mountpoint, inside the snapshotter's root
CACHE_DIR = "cache"  # default chunk cache directory, inside the snapshotter's root
T = TypeVar("T")


@dataclass(frozen=True)
class LazySettings:
    mountpoint: Path
    plain_http: tuple[str, ...] = ()  # registry hosts spoken to over plain HTTP
    plain_http_localhost: bool = True  # as the reference: registries on loopback are plain HTTP
    hosts_dir: Path | None = None  # containerd-style hosts.toml directory
    layer: Config = field(default_factory=Config)
    mirrors: Mapping[str, tuple[MirrorConfig, ...]] = field(default_factory=dict)
    metrics_address: str = ""  # served from the start of the lazy worker; empty: none


def settings_from_config(config: FileConfig, root: Path, where: str) -> LazySettings | None:
    """The lazy layers' settings of a config file (``stargz.config``); None when disabled."""
    lazy = config.lazy
    if not lazy.enabled:
        return None
    mountpoint = _abs_path(lazy.mountpoint or str(root / MOUNT_DIR), "mountpoint", where)
    metrics = "" if config.daemon.no_prometheus else config.daemon.metrics_address
    return LazySettings(
        mountpoint=mountpoint,
        plain_http=lazy.plain_http,
        plain_http_localhost=lazy.plain_http_localhost,
        hosts_dir=_abs_path(lazy.hosts_dir, "hosts_dir", where) if lazy.hosts_dir else None,
        # chunks outlive a restart unless a directory is chosen
        layer=with_cache_directory(config.layer, root / CACHE_DIR),
        mirrors=config.mirrors,
        metrics_address=metrics,
    )


def settings_from_table(table: Mapping[str, Any], root: Path, where: str) -> LazySettings | None:
    """The settings of an older ``[lazy]`` table alone (its keys are top-level ones now)."""
    return settings_from_config(file_config_from_dict({LAZY_TABLE: dict(table)}, where), root,
                                where)


def _abs_path(value: object, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"config {where}: key {key!r} must be an absolute path, not {value!r}")
    return Path(value)


def load_lazy(path: Path | None, root: Path) -> LazyLayers | ManagedLazyLayers | None:
    """The lazy layers a config file asks for, with the defaults when there is no file (lazy
    pulling is what the daemon is for); None only when ``enabled = false``."""
    return lazy_from_config(load_file_config(path), root, str(path or "defaults"))


MANAGER_CALL_MARGIN_S = 30.0


def lazy_from_config(config: FileConfig, root: Path,
                     where: str) -> LazyLayers | ManagedLazyLayers | None:
    """The lazy layers, mounted by this process or, with ``[fuse_manager] enable``, by the
    FUSE manager (``stargz fuse-manager``) it asks over a socket."""
    settings = settings_from_config(config, root, where)
    if settings is None:
        return None
    if config.fuse_manager.enable:
        from stargz.snapshotter.fusemanager import ManagedLazyLayers  # anyio, registry: late

        # A call waits at most for a resolution and a prefetch, as a Prepare in-process would.
        layer = settings.layer
        return ManagedLazyLayers(Path(config.fuse_manager.address),
                                 layer.blob.fetch_timeout_sec + layer.prefetch_timeout_sec
                                 + MANAGER_CALL_MARGIN_S)
    return LazyLayers(settings)


@dataclass(frozen=True)
class LayerSource:
    """Where a layer comes from, as the Prepare labels say (ctr-remote's or CRI's names)."""

    repository: Reference
    digest: str
    toc_digest: str | None
    image_layers: tuple[str, ...]
    prefetch_size: int | None = None  # the stargz.prefetch label
    skip_verify: bool = False  # the stargz.skipverify label (honoured if the config allows)
    urls: tuple[str, ...] = ()  # the remote/urls label: other places serving the blob

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LayerSource:
        reference = labels.get(LABEL_STARGZ_REFERENCE) or labels.get(LABEL_CRI_IMAGE_REF)
        digest = labels.get(LABEL_STARGZ_DIGEST) or labels.get(LABEL_CRI_LAYER_DIGEST)
        layers = labels.get(LABEL_STARGZ_LAYERS) or labels.get(LABEL_CRI_IMAGE_LAYERS) or ""
        if not reference or not digest:
            raise InvalidArgumentError("the labels name no image reference and layer digest")
        return cls(
            # tag kept: it finds an external-TOC layer's TOC image (<tag>-esgztoc)
            repository=_parse_reference(reference),
            digest=digest,
            toc_digest=labels.get(LABEL_TOC_DIGEST) or None,
            image_layers=tuple(d for d in layers.split(",") if d),
            prefetch_size=_prefetch_label(labels.get(LABEL_STARGZ_PREFETCH)),
            skip_verify=LABEL_STARGZ_SKIP_VERIFY in labels,
            urls=tuple(u for u in labels.get(LABEL_URLS, "").split(",") if u),
        )


def _prefetch_label(value: str | None) -> int | None:
    """Bytes to prefetch; as the reference, a value that is not a whole number is ignored."""
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        log.warning("label %s=%r is not a number of bytes: ignored", LABEL_STARGZ_PREFETCH,
                    value)
        return None
    return size if size >= 0 else None


class LazyLayers:
    """RemoteLayers whose layers live on a worker thread's event loop (``lazyworker``).

    The snapshotter makes blocking filesystem calls (stat of a lowerdir) on its event loop; were
    the FUSE mount served by that same loop, such a call into the mount would wait for itself.
    So the mount and the process's LayerService run on the worker's loop (an anyio portal), and
    each hook call is handed over to it. The worker's modules (pyfuse3, the registry client) load
    when it starts, not with this module, so the daemon's socket is up before they are."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings
        self._worker: Future[Worker] | None = None

    def warm_up(self) -> None:
        """Start the worker now, on a thread of its own (the daemon calls this once its socket
        is up: the imports overlap containerd's start), so the first Prepare finds it ready."""
        self._start()

    async def ready(self) -> None:
        """Once the worker runs and has loaded what a first Prepare needs (the daemon then
        tells systemd it is ready). Raises what the worker's start raised."""
        worker = await asyncio.wrap_future(self._start())
        await worker.call(lambda mounts: mounts.warmed.wait())

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        return await self._call(lambda m: m.prepare_remote(labels))

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        return await self._call(lambda m: m.restore(labels))

    async def release(self, name: str, directory: str) -> None:
        await self._call(lambda m: m.release(directory))

    async def check(self, name: str, directory: str) -> None:
        await self._call(lambda m: m.check(directory))

    async def aclose(self) -> None:
        """Unmount, close the layers, stop the worker (the daemon calls this on its way out)."""
        future, self._worker = self._worker, None
        if future is None:
            return
        try:
            worker = await asyncio.wrap_future(future)
        except Exception:  # it never started: nothing to stop
            return
        await asyncio.to_thread(worker.stop)

    async def _call(self, work: Callable[[LazyMounts], Awaitable[T]]) -> T:
        with span("lazy_worker_wait"):  # the first call may wait for the worker's start
            worker = await asyncio.wrap_future(self._start())
        return await worker.call(work)

    def _start(self) -> Future[Worker]:
        """The worker, started once (again after a failed start)."""
        future = self._worker
        if future is None or (future.done() and future.exception() is not None):
            future = self._worker = Future()
            threading.Thread(target=_start_worker, args=(self.settings, future),
                             name="stargz-lazy-start", daemon=True).start()
        return future


def _start_worker(settings: LazySettings, future: Future[Worker]) -> None:
    future.set_running_or_notify_cancel()
    try:
        with span("startup_lazy_worker"):
            from stargz.snapshotter.lazyworker import Worker  # pyfuse3, registry client, caches

            worker = Worker.start(settings)
        future.set_result(worker)
    except BaseException as err:
        future.set_exception(err)


def _parse_reference(text: str) -> Reference:
    from stargz.registry.reference import Reference  # the registry package loads httpx

    return Reference.parse(text)


def layer_dirname(digest: str) -> str:
    """The layer's directory in the mount: its digest without the ":" overlayfs splits on."""
    return digest.replace(":", "-")

