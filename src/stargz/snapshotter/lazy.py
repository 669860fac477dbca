"""The lazy RemoteLayers: eStargz layers read from their registry on demand, through one FUSE mount.

A Prepare with remote-snapshot labels names a layer (image reference + layer digest) and its TOC
digest. We open the blob (footer and TOC only, the TOC checked against the digest), add it to the
daemon's FUSE mount and hand back ``<mountpoint>/<layer digest>`` as the overlayfs lowerdir. The
image's other layers (``stargz.layers``) are opened in the background so their Prepares are quick.
Without a TOC digest we decline: the layer can not be verified, so it is downloaded as usual.

Configured by a ``[lazy]`` table in the snapshotter's TOML file (see :func:`load_lazy`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from stargz.config import Config, config_from_dict, read_toml
from stargz.errors import ConfigError, InvalidArgumentError, StargzError
from stargz.estargz.reader import UnverifiedBlob, open_blob
from stargz.fs.mount import LazyFS
from stargz.layer.layer import Layer
from stargz.layer.opening import fetch_tail
from stargz.layer.pool import make_cache
from stargz.layer.stats import LayerStats
from stargz.registry.client import RegistryClient
from stargz.registry.credentials import CredentialStore
from stargz.registry.hosts import HostsConfig
from stargz.registry.reference import Reference
from stargz.remote.fetcher import RegistryBlobFetcher, retry_policy
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
RESOLVE_CONCURRENCY = 2  # other layers opened at once in the background
WORKER_STOP_S = 10.0
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
    """RemoteLayers whose layers live in a worker thread with its own event loop.

    The snapshotter makes blocking filesystem calls (stat of a lowerdir) on its event loop; were
    the FUSE mount served by that same loop, such a call into the mount would wait for itself.
    So the mount, the layers and their registry client run on the worker's loop, and each hook
    call is handed over to it."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._service: _LayerService | None = None

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        return await self._call(lambda s: s.prepare_remote(labels))

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        return await self._call(lambda s: s.restore(labels))

    async def release(self, name: str, directory: str) -> None:
        await self._call(lambda s: s.release(directory))

    async def aclose(self) -> None:
        """Unmount and stop the worker (the daemon calls this on its way out)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        await self._call(lambda s: s.aclose())
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, WORKER_STOP_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = self._service = None

    async def _call(self, work: Callable[[_LayerService], Awaitable[T]]) -> T:
        loop, service = self._start()

        async def run() -> T:
            return await work(service)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    def _start(self) -> tuple[asyncio.AbstractEventLoop, _LayerService]:
        if self._loop is None or self._service is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="stargz-lazy", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            self._service = _LayerService(self.settings)
        return self._loop, self._service


class _LayerService:
    """Every layer in one FUSE mount, with per-directory use counts (on the worker's loop)."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings
        hosts = HostsConfig.create(settings.hosts_dir, insecure_hosts=settings.plain_http,
                                   plain_http_localhost=settings.plain_http_localhost)
        # Credentials as a user's: $STARGZ_USERNAME/$STARGZ_PASSWORD, then the Docker config.
        self.registry = RegistryClient(hosts, CredentialStore.from_environment(),
                                       retry=retry_policy(settings.layer.blob))
        self.cache = make_cache(settings.layer)
        self.fs: LazyFS | None = None
        self._serving: asyncio.Task[None] | None = None
        self._mount_lock = asyncio.Lock()
        self._opening: dict[str, asyncio.Task[Layer]] = {}  # layer digest -> verified layer
        self._resolved: dict[str, asyncio.Task[_Resolved]] = {}  # layer digest -> footer + TOC
        self._uses: dict[str, int] = {}  # directory name -> times handed out
        self._digests: dict[str, str] = {}  # directory name -> layer digest
        self._resolving: set[asyncio.Task[None]] = set()
        self._resolve_slots = asyncio.Semaphore(RESOLVE_CONCURRENCY)

    async def prepare_remote(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None:
            log.info("layer %s has no TOC digest label: it can not be verified, declining",
                     source.digest)
            return None
        with span("lazy_prepare", layer=source.digest):
            directory = await self._mount_layer(source)
        self._resolve_others(source)
        return directory

    async def restore(self, labels: Mapping[str, str]) -> str | None:
        source = LayerSource.from_labels(labels)
        if source.toc_digest is None:
            return None
        return await self._mount_layer(source)

    async def release(self, directory: str) -> None:
        name = Path(directory).name
        uses = self._uses.get(name, 0) - 1
        if uses > 0:
            self._uses[name] = uses
            return
        self._uses.pop(name, None)
        digest = self._digests.pop(name, name)
        if self.fs is not None:
            self.fs.remove_layer(name)
        task = self._opening.pop(digest, None)
        if task is not None and task.done() and not _failed(task):
            await task.result().close()
        log.info("layer %s released", digest)

    async def aclose(self) -> None:
        """Stop background work, unmount, close the layers and the registry client."""
        pending = [*self._resolving, *self._resolved.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, *self._opening.values(), return_exceptions=True)
        for layer_task in self._opening.values():
            if not _failed(layer_task):
                await layer_task.result().close()
        self._opening.clear()
        self._resolved.clear()
        if self.fs is not None and self._serving is not None:
            self.fs.stop()
            await asyncio.gather(self._serving, return_exceptions=True)
        await self.registry.aclose()

    # -- mounting ------------------------------------------------------------------------------

    async def _mount_layer(self, source: LayerSource) -> str:
        layer = await self._open(source)
        with span("fuse_mount"):
            fs = await self._ensure_mounted()
        name = layer_dirname(source.digest)
        with span("add_layer", layer=source.digest):
            directory = fs.add_layer(layer, name)
        self._uses[name] = self._uses.get(name, 0) + 1
        self._digests[name] = source.digest
        layer.start()  # prefetch (landmark), then the background fetch unless configured off
        event("mount_ready", layer=source.digest)
        log.info("layer %s mounted lazily at %s", source.digest, directory)
        return str(directory)

    async def _ensure_mounted(self) -> LazyFS:
        async with self._mount_lock:
            if self.fs is not None and self._serving is not None and not self._serving.done():
                return self.fs
            mountpoint = self.settings.mountpoint
            await asyncio.to_thread(mountpoint.mkdir, parents=True, exist_ok=True)
            fs = LazyFS(mountpoint)
            ready = asyncio.Event()
            serving = asyncio.create_task(fs.serve(ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({serving, waiter}, timeout=MOUNT_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not ready.is_set():
                serving.cancel()
                error = serving.exception() if serving.done() and not serving.cancelled() else None
                if isinstance(error, StargzError):
                    raise error
                raise StargzError(f"FUSE mount on {mountpoint} did not come up: {error}")
            self.fs, self._serving = fs, serving
            return fs

    async def _open(self, source: LayerSource) -> Layer:
        """The verified layer, opened once and shared by everyone asking for it."""
        task = self._opening.get(source.digest)
        if task is None or _failed(task):
            task = asyncio.create_task(self._open_layer(source))
            self._opening[source.digest] = task
        return await asyncio.shield(task)

    async def _open_layer(self, source: LayerSource) -> Layer:
        assert source.toc_digest is not None
        with span("resolve_wait", layer=source.digest):  # shared with a background resolve
            resolved = await self._resolve(source.repository, source.digest)
        with span("verify", layer=source.digest):
            blob = await asyncio.to_thread(resolved.blob.verify, source.toc_digest)
        log.info("opened layer %s (%d bytes) from %s", source.digest, resolved.fetcher.size,
                 source.repository)
        with span("index", layer=source.digest):
            return Layer(source.digest, blob, resolved.fetcher, self.cache, self.settings.layer,
                         resolved.stats)

    def _resolve(self, repository: Reference, digest: str) -> asyncio.Future[_Resolved]:
        """Footer and TOC of a blob, fetched once (verified later, by the layer's own Prepare:
        only its labels carry its TOC digest)."""
        task = self._resolved.get(digest)
        if task is None or _failed(task):
            task = asyncio.create_task(self._fetch_toc(repository, digest))
            self._resolved[digest] = task
        return asyncio.shield(task)

    async def _fetch_toc(self, repository: Reference, digest: str) -> _Resolved:
        with span("head", layer=digest) as head:
            size = await self.registry.head_blob(repository, digest)
            head.set(size=size)
        fetcher = RegistryBlobFetcher(self.registry, repository, digest, size)
        stats = LayerStats(size=size)
        with span("toc_fetch", layer=digest) as fetch:
            tail = await fetch_tail(fetcher, self.settings.layer.blob.fetch_timeout_sec, stats)
            fetch.set(bytes=stats.fetched_metadata, requests=stats.requests)
        with span("toc_parse", layer=digest) as parse:
            blob = await asyncio.to_thread(open_blob, tail)
            parse.set(entries=len(blob.toc.entries))
        return _Resolved(fetcher, blob, stats)

    def _resolve_others(self, source: LayerSource) -> None:
        """Fetch the TOCs of the image's other layers now, so their Prepares are quick."""
        for digest in source.image_layers:
            if digest == source.digest or digest in self._resolved:
                continue
            task = asyncio.create_task(self._resolve_quietly(source.repository, digest))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)

    async def _resolve_quietly(self, repository: Reference, digest: str) -> None:
        async with self._resolve_slots:
            try:
                await self._resolve(repository, digest)
            except StargzError as err:  # its own Prepare will try again, and fall back
                log.info("resolving layer %s in the background failed: %s", digest, err)


@dataclass(frozen=True)
class _Resolved:
    fetcher: RegistryBlobFetcher
    blob: UnverifiedBlob
    stats: LayerStats


def layer_dirname(digest: str) -> str:
    """The layer's directory in the mount: its digest without the ":" overlayfs splits on."""
    return digest.replace(":", "-")


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
