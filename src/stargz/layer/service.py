"""The layer service: every lazily pulled layer of a process, resolved once, shared, evicted.

    async with LayerService(config, registry) as service:
        service.resolve_soon(repo, other_digest)                  # the image's other layers
        layer = await service.acquire(repo, digest, toc_digest)   # verified; prefetch waited for
        ...
        await service.release(digest)

One per process, behind every front end (the snapshotter, ``stargz mount``, the podman store):

- a blob is resolved once (its size, footer and TOC: one or two range requests, the TOC parsed):
  concurrent acquires and pre-resolutions share that work, and a failed resolution is forgotten
  so that the next caller tries again;
- it is verified once per TOC digest, and gives one :class:`Layer` while anyone holds it (use
  counts). When the last user releases it, its fetches stop and its resolution (the verified TOC)
  stays in an LRU of ``resolve_result_entry`` unused blobs, each kept at most
  ``resolve_result_entry_ttl_sec``, so a quick re-acquire fetches nothing;
- ``acquire`` (or, later, ``wait_prefetch``) waits for the layer's prefetch up to
  ``prefetch_timeout_sec`` (the reference's Check before a layer is used);
- it owns the chunk caches, the process's background scheduler, and the registry client when it
  made it. Resolving is prioritized work for the scheduler, as in the reference.

Async plumbing is anyio's: work shared between callers runs in the service's task group, so a
caller that gives up (cancelled) does not cancel it for the others.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.abc

from stargz import opmetrics
from stargz.cache import ChunkCache, write_behind_cache
from stargz.config import Config
from stargz.errors import InvalidArgumentError, StargzError, TOCDigestMismatch, TransportError
from stargz.estargz.reader import TAIL_READ, UnverifiedBlob, VerifiedBlob
from stargz.layer.externaltoc import TOCImage
from stargz.layer.landmark import landmark_end
from stargz.layer.layer import Layer
from stargz.layer.opening import ExternalTOC, TailSource, fetch_tail, open_tail
from stargz.layer.persisted import PersistedTail, TOCStore
from stargz.layer.scheduler import BackgroundScheduler
from stargz.layer.stats import LayerStats
from stargz.registry.client import RegistryClient
from stargz.registry.reference import Reference
from stargz.remote.ahead import AheadFetcher
from stargz.remote.fetcher import BlobFetcher, RegistryBlobFetcher
from stargz.remote.held import HeldBytesFetcher
from stargz.trace import span

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", str, tuple[str, str])
# A prefetch range bigger than this is fetched by the layer after the TOC's parse, in steps,
# rather than held whole in memory ahead of it.
MAX_FETCH_AHEAD = 32 << 20
# Prefetch ranges fetched ahead, in all layers together, hold at most this many of the registry
# client's range requests (8) at a time: two stay free for on-demand reads. With none left, a
# read of another layer queued behind a slow prefetch (ctr's read of /etc/group waited for a
# stalled one in test_prefetch_at_create). A 4.5 MB range (python3 images) is 5 pieces.
AHEAD_REQUESTS = 6
OpenFetcher = Callable[[Reference, str, "int | None"], Awaitable[BlobFetcher]]


@dataclass(eq=False)
class Resolution:
    """A blob resolved: how to fetch it, its TOC (verified once asked with its digest), and
    the layer made of it while anyone uses it."""

    digest: str
    fetcher: BlobFetcher
    stats: LayerStats
    unverified: UnverifiedBlob | None  # dropped once verified (the raw TOC JSON is big)
    toc_digest: str
    verified: VerifiedBlob | None = None
    layer: Layer | None = None
    uses: int = 0
    tail: TailSource | None = None  # footer + TOC as fetched, kept on disk once verified
    external_toc: bytes | None = None
    repository: str = ""
    released_at: float = 0.0  # time.monotonic() when it became unused


class _Shared(Generic[T]):
    """A result one task computes for everyone who asks while it runs."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: T | None = None
        self.error: StargzError | None = None

    async def result(self) -> T:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class _Kept:
    """An external TOC source that keeps what it gave (to be persisted with the layer)."""

    def __init__(self, source: ExternalTOC | None) -> None:
        self._source = source
        self.data: bytes | None = None
        self.fetch: ExternalTOC | None = self._fetch if source is not None else None

    async def _fetch(self) -> bytes:
        assert self._source is not None
        self.data = await self._source()
        return self.data


class LayerService:
    """Lazily pulled layers by blob digest; see the module docstring."""

    def __init__(self, config: Config, registry: RegistryClient | None = None, *,
                 cache: ChunkCache | None = None, open_fetcher: OpenFetcher | None = None,
                 owns_registry: bool = False) -> None:
        """``registry`` reads blobs unless ``open_fetcher`` says where they come from; it is
        closed with the service when ``owns_registry``. ``cache`` defaults to the config's
        (memory, plus disk written behind the readers)."""
        if registry is None and open_fetcher is None:
            raise InvalidArgumentError("a layer service needs a registry client or open_fetcher")
        self.config = config
        self.registry = registry
        self._owns_cache = cache is None
        self.cache: ChunkCache = cache if cache is not None else write_behind_cache(config.cache)
        self.scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)
        self._open_fetcher = open_fetcher or self._registry_fetcher
        self._owns_registry = owns_registry
        self._resolving: dict[str, _Shared[Resolution]] = {}
        self._verifying: dict[tuple[str, str], _Shared[VerifiedBlob]] = {}
        self._resolved: dict[str, Resolution] = {}
        self._unused: OrderedDict[str, None] = OrderedDict()  # resolved, no user; oldest first
        self._toc_images: dict[str, TOCImage] = {}  # image -> its TOC image (external TOCs)
        self._ahead_slots: anyio.CapacityLimiter | None = None  # made on the loop, when first used
        self._group: anyio.abc.TaskGroup | None = None
        self._unverified_reasons: dict[str, str] = {}  # digest -> why its TOC is trusted
        self._prefetch_sizes: dict[str, int] = {}  # digest -> its front end's prefetch_size
        # verified TOCs kept beside the chunk cache: a restart mounts again without a registry
        self.tocs = TOCStore(config.cache.directory) if config.cache.directory else None

    async def __aenter__(self) -> LayerService:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Cancel what is still resolving, close every layer, the caches and the registry
        client if ours. The caller's exception passes through as it is (not in a group)."""
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            for resolution in list(self._resolved.values()):
                if resolution.layer is not None:
                    await resolution.layer.close()
                    resolution.layer = None
            self._resolved.clear()
            self._unused.clear()
            close = getattr(self.cache, "close", None) if self._owns_cache else None
            if close is not None:  # the disk writes still queued
                await anyio.to_thread.run_sync(close)
            if self._owns_registry and self.registry is not None:
                await self.registry.aclose()

    # -- the front ends' calls -------------------------------------------------------------

    async def acquire(self, repo: Reference, digest: str, toc_digest: str,
                      size: int | None = None, *, wait_prefetch: bool = True,
                      unverified_reason: str | None = None,
                      prefetch_size: int | None = None) -> Layer:
        """Layer ``digest`` of ``repo``, verified against ``toc_digest``, its prefetch and
        background fetch started; one use more (give it back with :meth:`release`). With
        ``wait_prefetch``, returns once the prefetch is done or ``prefetch_timeout_sec`` passed.
        An empty ``toc_digest`` is refused unless ``unverified_reason`` says why the front end
        allows it (disable_verification, allow_no_verification): then the TOC is trusted as
        served, loudly, and chunks are still checked against it. ``prefetch_size`` overrides
        the config's for this layer when it has no landmark (the stargz.prefetch label)."""
        if not toc_digest and not unverified_reason:
            raise InvalidArgumentError(f"layer {digest} has no TOC digest: it can not be verified")
        self._unverified_reasons[digest] = unverified_reason or ""
        if prefetch_size is not None:
            self._prefetch_sizes[digest] = prefetch_size
        with opmetrics.timed(opmetrics.MOUNT, digest):
            return await self._acquire(repo, digest, toc_digest, size, wait_prefetch)

    async def _acquire(self, repo: Reference, digest: str, toc_digest: str, size: int | None,
                       wait_prefetch: bool) -> Layer:
        with self.scheduler.prioritized():
            with span("resolve_wait", layer=digest):  # shared with a background resolve
                resolution = self._use(await self._resolve(repo, digest, size, toc_digest))
            try:
                with span("verify", layer=digest):
                    blob = await self._verify(resolution, toc_digest)
                layer = self._layer(resolution, blob)
            except BaseException:
                self._give_back(resolution)
                raise
        if wait_prefetch:
            try:
                await layer.wait_prefetch()
            except BaseException:
                self._give_back(resolution)
                raise
        return layer

    async def release(self, digest: str) -> None:
        """One use of ``digest`` fewer; the last one stops the layer's fetches."""
        resolution = self._resolved.get(digest)
        if resolution is None or resolution.uses == 0:
            log.debug("release of layer %s, which nobody uses", digest)
            return
        layer = self._give_back(resolution, close=False)
        if layer is not None:
            await layer.close()
            log.info("layer %s released", digest)

    async def wait_prefetch(self, digest: str) -> bool:
        """Wait for acquired layer ``digest``'s prefetch; False: still running at the timeout."""
        resolution = self._resolved.get(digest)
        if resolution is None or resolution.layer is None:
            raise InvalidArgumentError(f"layer {digest} is not in use")
        if not resolution.layer.stats().prefetch_complete:
            log.info("layer %s: waiting for its prefetch", digest)
        return await resolution.layer.wait_prefetch()

    def resolve_soon(self, repo: Reference, digest: str, size: int | None = None) -> None:
        """Resolve ``digest`` in the background (a failure is only logged: an acquire tries
        again), so that its acquire finds it ready."""
        if digest in self._resolved or digest in self._resolving:
            return
        self._shared(self._resolving, digest, lambda: self._resolve_blob(repo, digest, size),
                     quiet=True)

    def uses(self, digest: str) -> int:
        resolution = self._resolved.get(digest)
        return resolution.uses if resolution is not None else 0

    def resolved(self) -> list[str]:
        """Digests of the blobs held resolved (in use or in the LRU)."""
        return list(self._resolved)

    # -- resolving and verifying, shared -----------------------------------------------------

    async def _resolve(self, repo: Reference, digest: str, size: int | None,
                       toc_digest: str | None = None) -> Resolution:
        resolution = self._resolved.get(digest)
        if resolution is not None:
            return resolution
        if toc_digest and digest not in self._resolving:
            resolution = await self._resolve_from_disk(repo, digest, toc_digest)
            if resolution is not None:
                return resolution
        shared = self._resolving.get(digest) or self._shared(
            self._resolving, digest, lambda: self._resolve_blob(repo, digest, size))
        return await shared.result()

    async def _resolve_blob(self, repo: Reference, digest: str, size: int | None) -> Resolution:
        with self.scheduler.prioritized():
            fetcher, tail, stats = await self._fetch_tail(repo, digest, size)
            fetcher = await self._fetch_ahead(_with_held_tail(fetcher, tail), tail, digest)
            external = _Kept(self._external_toc(repo, digest))
            with span("toc_parse", layer=digest) as parse:
                unverified = await open_tail(tail, stats, digest, external.fetch,
                                             self.config.limits)
                parse.set(entries=len(unverified.toc.entries))
        resolution = Resolution(digest, fetcher, stats, unverified, unverified.toc_digest,
                                tail=tail, external_toc=external.data, repository=str(repo))
        self._resolved[digest] = resolution
        self._park(resolution)  # unused until someone acquires it
        log.info("resolved layer %s (%d bytes, TOC %s)", digest, fetcher.size,
                 resolution.toc_digest)
        return resolution

    async def _fetch_ahead(self, fetcher: BlobFetcher, tail: TailSource,
                           digest: str) -> BlobFetcher:
        """The fetcher, fetching the blob's prefetch range already when the tail tells where
        its landmark is: the download overlaps the TOC's parse instead of following it."""
        if self.config.noprefetch or self._group is None:
            return fetcher
        with span("landmark", layer=digest) as found:
            end = await anyio.to_thread.run_sync(landmark_end, tail.data, tail.size,
                                                 self.config.limits.max_toc_bytes)
            found.set(end=end)
        end = min(end or 0, tail.base)  # the tail's bytes are held already
        if not end or end > MAX_FETCH_AHEAD:
            return fetcher
        pieces = -(-end // max(1, self.config.background_batch_bytes))
        if self._ahead_slots is None:
            self._ahead_slots = anyio.CapacityLimiter(AHEAD_REQUESTS)
        ahead = AheadFetcher(fetcher, end, pieces, self.config.blob.fetch_timeout_sec,
                             self._ahead_slots)
        self._group.start_soon(ahead.run)
        return ahead

    def _external_toc(self, image: Reference, digest: str) -> ExternalTOC | None:
        """Where the TOC of an external-TOC layer is: the TOC image of ``image``, found by its
        tag (a caller that names only the repository gets ExternalTOCError for such layers)."""
        if self.registry is None or not image.tag:
            return None
        key = str(image.with_tag(image.tag))
        toc_image = self._toc_images.get(key)
        if toc_image is None:
            toc_image = self._toc_images[key] = TOCImage(
                self.registry, image, self.config.limits.max_toc_bytes)
        return lambda: toc_image.toc_of(digest)

    async def _verify(self, resolution: Resolution, toc_digest: str) -> VerifiedBlob:
        verified = resolution.verified
        if verified is not None:
            if toc_digest and verified.toc_digest != toc_digest:
                raise TOCDigestMismatch(
                    f"TOC digest is {verified.toc_digest}, but {toc_digest} was expected")
            return verified
        key = (resolution.digest, toc_digest)
        shared = self._verifying.get(key) or self._shared(
            self._verifying, key, lambda: self._verify_blob(resolution, toc_digest))
        return await shared.result()

    async def _verify_blob(self, resolution: Resolution, toc_digest: str) -> VerifiedBlob:
        unverified = resolution.unverified
        if unverified is None:  # verified meanwhile, by another TOC digest's caller
            return await self._verify(resolution, toc_digest)
        if not toc_digest:
            reason = self._unverified_reasons.get(resolution.digest) or "no TOC digest"
            verified = await anyio.to_thread.run_sync(unverified.skip_verification, reason)
        else:
            verified = await anyio.to_thread.run_sync(unverified.verify, toc_digest)
        resolution.verified, resolution.unverified = verified, None
        await self._persist(resolution, toc_digest)
        return verified

    async def _persist(self, resolution: Resolution, toc_digest: str) -> None:
        """Keep the verified footer and TOC on disk (a failure costs only the offline restart)."""
        tail, resolution.tail = resolution.tail, None
        external, resolution.external_toc = resolution.external_toc, None
        if self.tocs is None or tail is None or not toc_digest:
            return  # a TOC trusted as served is not kept for an offline restart
        kept = PersistedTail(resolution.digest, tail.size, resolution.repository, toc_digest,
                             tail.base, tail.data, external)
        try:
            await anyio.to_thread.run_sync(self.tocs.save, kept)
        except OSError as err:
            log.warning("the TOC of layer %s can not be kept on disk: %s", resolution.digest,
                        err.strerror)

    async def _resolve_from_disk(self, repo: Reference, digest: str,
                                 toc_digest: str) -> Resolution | None:
        """The layer resolved from its persisted footer and TOC (verified again), no network."""
        if self.tocs is None:
            return None
        loaded = await anyio.to_thread.run_sync(self.tocs.load, digest, toc_digest,
                                                self.config.limits)
        if loaded is None or digest in self._resolved:
            return self._resolved.get(digest)
        size, verified = loaded
        fetcher = await self._open_fetcher(repo, digest, size)  # size known: no HEAD
        resolution = Resolution(digest, fetcher, LayerStats(size=size), None, toc_digest,
                                verified=verified, repository=str(repo))
        self._resolved[digest] = resolution
        self._park(resolution)
        log.info("resolved layer %s from its TOC kept on disk (TOC %s)", digest, toc_digest)
        return resolution

    def _shared(self, table: dict[K, _Shared[T]], key: K, work: Callable[[], Awaitable[T]],
                quiet: bool = False) -> _Shared[T]:
        """Start ``work`` in the service's task group; everyone asking for ``key`` meanwhile
        gets its result. A failure is given to them and forgotten."""
        if self._group is None:
            raise InvalidArgumentError("the layer service is not running (use async with)")
        shared: _Shared[T] = _Shared()
        table[key] = shared

        async def run() -> None:
            try:
                shared.value = await work()
            except StargzError as err:
                shared.error = err
            except Exception as err:  # one clear error for every waiter
                shared.error = TransportError(f"{type(err).__name__}: {err}")
            except anyio.get_cancelled_exc_class():
                shared.error = TransportError("the layer service is shutting down")
                raise
            finally:
                if table.get(key) is shared:
                    del table[key]
                shared.done.set()
                if shared.error is not None and quiet:
                    log.info("resolving layer %s in the background failed: %s", key,
                             shared.error)

        self._group.start_soon(run)
        return shared

    async def _fetch_tail(self, repo: Reference, digest: str,
                          size: int | None) -> tuple[BlobFetcher, TailSource, LayerStats]:
        """The blob's fetcher and its footer and TOC. From a registry, with the size unknown,
        one suffix-range request gives the size and the tail (no HEAD first)."""
        with span("toc_fetch", layer=digest) as fetch:
            fetcher, last = await self._open_blob(repo, digest, size)
            stats = LayerStats(size=fetcher.size)
            tail = await fetch_tail(fetcher, self.config.blob.fetch_timeout_sec, stats, digest,
                                    last)
            fetch.set(bytes=stats.fetched_metadata, requests=stats.requests + (last is not None))
        return fetcher, tail, stats

    async def _open_blob(self, repo: Reference, digest: str,
                         size: int | None) -> tuple[BlobFetcher, bytes | None]:
        """The blob's fetcher (and its tail, when one suffix-range request gave both), within
        ``fetching_timeout_sec`` like every other fetch: a stalled registry fails the layer's
        resolution (it falls back) instead of holding a Prepare through every retry."""
        timeout = self.config.blob.fetch_timeout_sec
        try:
            with anyio.fail_after(timeout):
                if size is None and self.registry is not None \
                        and self._open_fetcher == self._registry_fetcher:
                    return await RegistryBlobFetcher.open_with_tail(
                        self.registry, repo, digest, TAIL_READ)
                with span("head", layer=digest) as head:
                    fetcher = await self._open_fetcher(repo, digest, size)
                    head.set(size=fetcher.size)
                return fetcher, None
        except TimeoutError:
            raise TransportError(f"layer {digest}: the registry did not answer for its footer "
                                 f"and TOC within {timeout:g} s (fetching_timeout_sec)") from None

    async def _registry_fetcher(self, repo: Reference, digest: str,
                                size: int | None) -> BlobFetcher:
        assert self.registry is not None
        if size is None:
            with opmetrics.timed(opmetrics.STARGZ_HEADER_GET, digest):
                size = await self.registry.head_blob(repo, digest)
        return RegistryBlobFetcher(self.registry, repo, digest, size)

    # -- uses and eviction -------------------------------------------------------------------

    def _layer(self, resolution: Resolution, blob: VerifiedBlob) -> Layer:
        if resolution.layer is None:
            with span("index", layer=resolution.digest):
                size = self._prefetch_sizes.get(resolution.digest, self.config.prefetch_size)
                config = replace(self.config, prefetch_size=size)
                resolution.layer = Layer(resolution.digest, blob, resolution.fetcher, self.cache,
                                         config, resolution.stats, self.scheduler)
            resolution.layer.start()  # prefetch (landmark), then the background fetch
        return resolution.layer

    def _use(self, resolution: Resolution) -> Resolution:
        """One use more of the blob's resolution (the one on record, should ``resolution``
        have been evicted and resolved again meanwhile)."""
        resolution = self._resolved.setdefault(resolution.digest, resolution)
        resolution.uses += 1
        self._unused.pop(resolution.digest, None)
        return resolution

    def _give_back(self, resolution: Resolution, close: bool = True) -> Layer | None:
        """One use fewer. The last one takes the layer away: returned (``close`` false) for
        the caller to close, else closed in the background."""
        resolution.uses -= 1
        if resolution.uses > 0:
            return None
        layer, resolution.layer = resolution.layer, None
        self._park(resolution)
        if layer is not None and close and self._group is not None:
            self._group.start_soon(layer.close)
        return layer

    def _park(self, resolution: Resolution) -> None:
        """Into the LRU of unused blobs; the oldest past the bound go."""
        if resolution.uses > 0:
            return
        resolution.released_at = time.monotonic()
        self._unused[resolution.digest] = None
        self._unused.move_to_end(resolution.digest)
        while len(self._unused) > self.config.resolve_result_entry:
            self._evict(next(iter(self._unused)))
        if self._group is not None:
            self._group.start_soon(self._expire, resolution)

    async def _expire(self, resolution: Resolution) -> None:
        released_at = resolution.released_at
        await anyio.sleep(self.config.resolve_result_entry_ttl_sec)
        if resolution.uses == 0 and resolution.released_at == released_at:
            self._evict(resolution.digest)

    def _evict(self, digest: str) -> None:
        self._unused.pop(digest, None)
        resolution = self._resolved.pop(digest, None)
        if resolution is not None:
            log.debug("layer %s evicted from the resolved layers", digest)


def _with_held_tail(fetcher: BlobFetcher, tail: TailSource) -> BlobFetcher:
    """The fetcher, answering from the chunk bytes the footer+TOC read brought along (a small
    blob's tail holds much of its data: without this they were fetched again)."""
    held = tail.chunk_bytes()
    return HeldBytesFetcher(fetcher, tail.base, held) if held else fetcher
