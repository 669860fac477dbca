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

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stargz.config import Config, config_from_dict, read_toml
from stargz.errors import ConfigError, InvalidArgumentError
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_LAYERS,
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
)
from stargz.trace import span

if TYPE_CHECKING:
    from stargz.registry.reference import Reference
    from stargz.snapshotter.lazyworker import LazyMounts, Worker

log = logging.getLogger(__name__)

LAZY_TABLE = "lazy"
MOUNT_DIR = "fuse"  # default mountpoint, inside the snapshotter's root
CACHE_DIR = "cache"  # default chunk cache directory, inside the snapshotter's root
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
            # tag kept: it finds an external-TOC layer's TOC image (<tag>-esgztoc)
            repository=_parse_reference(reference),
            digest=digest,
            toc_digest=labels.get(LABEL_TOC_DIGEST) or None,
            image_layers=tuple(d for d in layers.split(",") if d),
        )


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
        """Start the worker now, on a thread of its own (the daemon calls this before it opens
        its socket: the imports overlap containerd's start), so the first Prepare finds it ready."""
        self._start()

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

