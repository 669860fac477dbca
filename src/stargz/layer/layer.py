"""One lazily pulled layer: verified chunks from caches or fetched on demand.

Every chunk is decompressed and checked against its chunkDigest (VerifiedBlob.decode_member)
before it is cached or returned. Concurrent readers of a chunk share one fetch. Decompression,
hashing and disk I/O run in worker threads so the event loop (FUSE, gRPC) stays responsive.

Memory is bounded whatever the blob claims: a chunk needs at most limits.max_chunk_bytes to
decode (refused when the TOC is opened, and again here against this layer's own config), a
member shared by several chunks is decoded once, a read holds at most about one such bound
at a time, and a background request at most PLAIN_PER_COMPRESSED x background_batch_bytes
of decoded chunks (plus one member).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from stargz import opmetrics
from stargz.cache import ChunkCache
from stargz.config import Config
from stargz.errors import (
    CacheError,
    InvalidArgumentError,
    NotFoundError,
    StargzError,
    TOCError,
    TransportError,
)
from stargz.estargz.chunks import Chunk
from stargz.estargz.reader import VerifiedBlob
from stargz.layer.opening import open_verified
from stargz.layer.scheduler import BackgroundScheduler
from stargz.layer.stats import FetchKind, LayerStats
from stargz.remote.ahead import AheadFetcher
from stargz.remote.fetcher import BlobFetcher, fetch_checked
from stargz.remote.inflight import InFlight
from stargz.remote.regions import Range, merge_ranges, slice_from
from stargz.trace import span

log = logging.getLogger(__name__)

# Decoded bytes a background request may hold per compressed byte fetched: layers inflate
# 2-3x, so real groups are cut by their compressed size; a hostile zero-filled one is not.
PLAIN_PER_COMPRESSED = 4
# A reader's fetch of this many compressed bytes or more is decoded on this many threads
# (inflating and hashing release the GIL): a cold start's prefetch and first reads wait less.
DECODE_THREADS = 2
DECODE_SPLIT_BYTES = 512 << 10


class Layer:
    """A mounted layer: ``blob`` for metadata, ``read`` for verified file bytes."""

    def __init__(
        self,
        digest: str,
        blob: VerifiedBlob,
        fetcher: BlobFetcher,
        cache: ChunkCache,
        config: Config,
        stats: LayerStats,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        self._digest = digest
        self._blob = blob
        self._fetcher = fetcher
        self._cache = cache
        self.config = config
        self._stats = stats
        self._inflight = InFlight()
        self._pending: dict[FetchKind, tuple[list[Chunk], set[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # the process's scheduler (shared by every layer a LayerService opens), else our own
        self.scheduler = scheduler or BackgroundScheduler(config.background_quiet_sec,
                                                          config.max_concurrency)
        # No per-chunk work here unless the TOC needs it: the chunk list is made on first
        # use (the prefetch makes only its own part), the limits checked from the TOC's bounds.
        self._all_chunks: list[Chunk] | None = None
        _check_chunk_limits(blob, config.limits.max_chunk_bytes)
        # only members holding several chunks
        self._by_member = _shared_members(self.all_chunks) if blob.members_shared else {}
        self._prefetched = asyncio.Event()
        self._started: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None
        self._background_off = config.no_background_fetch

    @property
    def all_chunks(self) -> list[Chunk]:
        """Every chunk of the layer, in the order they sit in the blob."""
        if self._all_chunks is None:
            self._all_chunks = self._blob.chunks_in_blob_order()
        return self._all_chunks

    @classmethod
    async def open(
        cls,
        fetcher: BlobFetcher,
        digest: str,
        toc_digest: str | None,
        cache: ChunkCache,
        config: Config,
        skip_verification_reason: str | None = None,
        scheduler: BackgroundScheduler | None = None,
    ) -> Layer:
        """Read footer and TOC, verify the TOC digest; no prefetch (see ``layer.mount``)."""
        stats = LayerStats(size=fetcher.size)
        blob = await open_verified(
            fetcher, toc_digest, config.blob.fetch_timeout_sec, stats, skip_verification_reason,
            digest=digest)
        return cls(digest, blob, fetcher, cache, config, stats, scheduler)

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def blob(self) -> VerifiedBlob:
        return self._blob

    def stats(self) -> LayerStats:
        return self._stats

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` verified bytes of regular file ``path`` from ``offset``."""
        entry = self._blob.lookup(path)
        if entry is None or entry.type != "reg":
            raise NotFoundError(f"{path!r} is not a regular file in layer {self._digest}")
        if offset < 0 or size < 0:
            raise InvalidArgumentError(f"invalid read of {size} bytes at {offset} in {path!r}")
        end = min(entry.size, offset + size)
        if offset >= end:
            return b""
        wanted = [
            c for c in self._blob.chunks(entry.name) if c.end > offset and c.chunk_offset < end
        ]
        # A read of many small chunks goes in steps, so it never holds much more than the
        # bytes it returns (a FUSE read is one step: at most 1 MiB, usually one chunk).
        bound = self.config.limits.max_chunk_bytes
        parts: list[bytes] = []
        try:
            with span("read", layer=self._digest, path=entry.name, offset=offset,
                      size=end - offset):  # ms: how long the reader waited
                for step in _groups(wanted, 2 * bound, bound):
                    # all in memory: answered right here, no task, no thread, no scheduling
                    found = self._from_memory(step) or await self.load(step, "on_demand")
                    parts += (found[c.digest][max(offset, c.chunk_offset) - c.chunk_offset :
                                              min(end, c.end) - c.chunk_offset] for c in step)
                    del found
        except StargzError as err:
            self._stats.last_error = str(err)
            log.warning("layer %s: read of %r failed: %s", self._digest, entry.name, err)
            raise
        return b"".join(parts)

    def note_use(self) -> None:
        """The filesystem served a request of this layer: background fetches wait a moment."""
        self.scheduler.note_use()

    def _from_memory(self, wanted: list[Chunk]) -> dict[str, bytes] | None:
        """Every wanted chunk from the memory cache, or None (and nothing counted)."""
        found: dict[str, bytes] = {}
        for chunk in wanted:
            data = self._cache.peek(chunk.digest)
            if data is None:
                return None
            found[chunk.digest] = data
        self._stats.cache_hits += len(found)
        return found

    async def load(self, chunks: Iterable[Chunk], kind: FetchKind) -> dict[str, bytes]:
        """Verified bytes of ``chunks`` by digest: from a fetch already running, the caches,
        or one new multi-range request for everything missing.

        Claiming is synchronous (no await between looking for a running fetch and claiming),
        so two readers never fetch the same chunk, and a chunk's siblings in the same member
        are claimed with it so the member is fetched once."""
        wanted = {c.digest: c for c in chunks}
        waits: dict[str, asyncio.Future[bytes]] = {}
        claimed: list[Chunk] = []
        for digest, chunk in wanted.items():
            if self._join(digest, waits):
                continue
            for sibling in self._by_member.get(chunk.compressed_offset, [chunk]):
                free = sibling.digest == digest or not self._join(sibling.digest, {})
                if free and sibling.digest not in waits:
                    waits[sibling.digest] = self._inflight.claim(sibling.digest)
                    claimed.append(sibling)
        if claimed:
            self._enqueue(claimed, set(wanted), kind)
        return {digest: await asyncio.shield(waits[digest]) for digest in wanted}

    def _enqueue(self, claimed: list[Chunk], wanted: set[str], kind: FetchKind) -> None:
        """Queue claimed chunks; everything claimed in this turn of the event loop (say, the
        kernel's concurrent reads of several files) goes out as one multi-range request."""
        pending = self._pending.get(kind)
        if pending is None:
            pending = self._pending[kind] = ([], set())
            asyncio.get_running_loop().call_soon(self._flush, kind)
        pending[0].extend(claimed)
        pending[1].update(wanted)

    def _flush(self, kind: FetchKind) -> None:
        chunks, wanted = self._pending.pop(kind)
        self._spawn(self._resolve_group(chunks, wanted, kind))

    def _join(self, digest: str, waits: dict[str, asyncio.Future[bytes]]) -> bool:
        future = self._inflight.get(digest)
        if future is not None:
            waits[digest] = future
        return future is not None

    def _cache_lookup(self, digests: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for digest in digests:
            try:
                data = self._cache.get(digest)
            except CacheError as err:
                log.warning("chunk cache: %s", err)  # a broken cache costs a fetch, not a read
                data = None
            if data is not None:
                found[digest] = data
        return found

    async def _resolve_group(self, chunks: list[Chunk], wanted: set[str], kind: FetchKind) -> None:
        """Settle the claimed chunks' futures: from the caches, else fetched, decoded and
        verified. Runs as its own task so a reader cancelled mid-fetch does not fail the
        other readers waiting for the same chunks."""
        try:
            cached = await self._cached([c.digest for c in chunks])
            missing = [c for c in chunks if c.digest not in cached]
            if kind == "on_demand":
                self._stats.cache_hits += len(wanted & cached.keys())
                self._stats.cache_misses += len(wanted & {c.digest for c in missing})
            for chunk in chunks:
                if chunk.digest in cached:
                    self._stats.held.add(chunk.compressed_offset, chunk.compressed_end)
                    self._inflight.resolve(chunk.digest, cached[chunk.digest])
            results = await self._fetch_decode(missing, kind) if missing else []
        except BaseException as err:
            for chunk in chunks:
                self._inflight.fail(chunk.digest, _as_stargz(err))
            if not isinstance(err, Exception):
                raise
            return
        self._settle(results)

    def _settle(self, results: list[tuple[Chunk, bytes | StargzError]]) -> None:
        for chunk, result in results:
            if isinstance(result, bytes):
                self._stats.held.add(chunk.compressed_offset, chunk.compressed_end)
                self._inflight.resolve(chunk.digest, result)
            else:
                self._inflight.fail(chunk.digest, result)

    async def _cached(self, digests: list[str]) -> dict[str, bytes]:
        """The chunks the caches hold: memory right here, the rest looked up in a thread."""
        found = {d: data for d in digests if (data := self._cache.peek(d)) is not None}
        rest = [d for d in digests if d not in found]
        if rest:
            found.update(await asyncio.to_thread(self._cache_lookup, rest))
        return found

    async def _fetch_decode(
        self, chunks: list[Chunk], kind: FetchKind
    ) -> list[tuple[Chunk, bytes | StargzError]]:
        """Fetch (prioritized work: background fetches everywhere stop), decode, verify."""
        needs = {(c.compressed_offset, c.compressed_end) for c in chunks}
        ranges = merge_ranges(needs, self.config.blob.chunk_size)
        nbytes = sum(end - start for start, end in ranges)
        with span("fetch", kind=kind, layer=self._digest, path=chunks[0].path,
                  chunks=len(chunks), ranges=len(ranges), bytes=nbytes), \
                self.scheduler.prioritized():
            data = await fetch_checked(self._fetcher, ranges, self.config.blob.fetch_timeout_sec)
        self._stats.count_fetch(kind, nbytes)
        with span("decode", kind=kind, layer=self._digest, chunks=len(chunks)):  # + cache put
            parts = _by_compressed_size(chunks, DECODE_THREADS, DECODE_SPLIT_BYTES)
            decoded = await asyncio.gather(
                *(asyncio.to_thread(self._decode_all, part, ranges, data) for part in parts))
            return [result for part in decoded for result in part]

    async def _fetch_in_background(self, group: list[Chunk]) -> None:
        """Fetch, verify and cache what of ``group`` no cache holds and nobody is fetching,
        when the scheduler lets it (an on-demand fetch anywhere cancels the request, which is
        made again later). Nothing is claimed while waiting for the scheduler, so a reader
        never waits for the background: the chunks are claimed once their bytes are here."""
        wanted = [c for c in group if self._inflight.get(c.digest) is None]
        cached = await self._cached([c.digest for c in wanted])
        for chunk in wanted:
            if chunk.digest in cached:
                self._stats.held.add(chunk.compressed_offset, chunk.compressed_end)
        missing = [c for c in wanted if c.digest not in cached]
        if not missing:
            return
        needs = {(c.compressed_offset, c.compressed_end) for c in missing}
        ranges = merge_ranges(needs, self.config.blob.chunk_size)
        nbytes = sum(end - start for start, end in ranges)
        timeout = self.config.blob.fetch_timeout_sec

        async def fetch() -> list[bytes]:  # the span times the request, not the wait for a slot
            with span("fetch", kind="background", layer=self._digest, path=missing[0].path,
                      chunks=len(missing), ranges=len(ranges), bytes=nbytes):
                return await fetch_checked(self._fetcher, ranges, timeout)

        data = await self.scheduler.run(fetch)
        self._stats.count_fetch("background", nbytes)
        free = [c for c in missing if self._inflight.get(c.digest) is None]
        for chunk in free:  # a reader asking for one of these now waits for our decoding
            self._inflight.claim(chunk.digest)
        try:
            with span("decode", kind="background", layer=self._digest, chunks=len(free)):
                results = await asyncio.to_thread(self._decode_all, free, ranges, data)
        except BaseException as err:
            for chunk in free:
                self._inflight.fail(chunk.digest, _as_stargz(err))
            raise
        self._settle(results)
        failed = [r for _, r in results if not isinstance(r, bytes)]
        if failed:
            raise failed[0]

    def _decode_all(
        self, chunks: list[Chunk], ranges: list[Range], data: list[bytes]
    ) -> list[tuple[Chunk, bytes | StargzError]]:
        """Decode and verify ``chunks``; each member (shared by packed small files) once."""
        members: dict[tuple[int, int], list[Chunk]] = {}
        for chunk in chunks:
            members.setdefault((chunk.compressed_offset, chunk.compressed_end), []).append(chunk)
        results: list[tuple[Chunk, bytes | StargzError]] = []
        for span_, siblings in members.items():
            member = slice_from(ranges, data, span_)
            try:
                decoded = self._blob.decode_member(siblings, member)
            except StargzError as err:
                decoded = [err for _ in siblings]
            for chunk, plain in zip(siblings, decoded, strict=True):
                if isinstance(plain, StargzError):  # tampered or damaged: never cached or served
                    results.append((chunk, type(plain)(f"layer {self._digest}: {plain}")))
                    continue
                self._cache_put(chunk.digest, plain)
                results.append((chunk, plain))
        return results

    def _cache_put(self, digest: str, data: bytes) -> None:
        try:
            self._cache.put(digest, data)
        except CacheError as err:
            log.warning("chunk cache: %s", err)  # serving the verified bytes still works

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        """Begin the prefetch (landmark, else ``prefetch_size``), then the background fetch."""
        if self._started is None:
            self._started = self._spawn(self._prefetch_then_background())

    def prefetch_end(self) -> int:
        """Compressed offset up to which the blob is prefetched at mount (0: nothing)."""
        if self.config.noprefetch:
            return 0
        end = self._blob.prefetch_end()
        if end is None:
            end = self.config.prefetch_size
        return min(end, self._fetcher.size)

    async def wait_prefetch(self, timeout: float | None = None) -> bool:
        """Wait for the prefetch, at most ``timeout`` (default prefetch_timeout_sec) seconds;
        False when it is still running."""
        limit = self.config.prefetch_timeout_sec if timeout is None else timeout
        try:
            with span("prefetch_wait", layer=self._digest):
                await asyncio.wait_for(self._prefetched.wait(), limit)
        except TimeoutError:
            return False
        return True

    def stop_background(self) -> None:
        """Switch the background fetch off (chunks already being fetched still land)."""
        self._background_off = True
        if self._background is not None:
            self._background.cancel()

    async def wait_background(self) -> None:
        """Wait until the prefetch and the background fetch have finished (or were stopped)."""
        for task in (self._started, self._background):
            if task is not None:
                await asyncio.gather(asyncio.shield(task), return_exceptions=True)
        if self._background is not None:  # spawned by _started while we waited
            await asyncio.gather(asyncio.shield(self._background), return_exceptions=True)

    async def _prefetch_then_background(self) -> None:
        end = self.prefetch_end()
        chunks = self._blob.chunks_in_blob_order(before=end)
        try:
            with span("prefetch", layer=self._digest, chunks=len(chunks), end=end) as traced, \
                    self.scheduler.prioritized(), \
                    opmetrics.timed(opmetrics.PREFETCH_TOTAL, self._digest):
                failures = await self._fetch_groups(chunks, "prefetch")
                traced.set(bytes=self._stats.fetched_prefetch, failures=failures)
            self._stats.prefetch_complete = failures == 0
        finally:
            self._prefetched.set()
            if isinstance(self._fetcher, AheadFetcher):  # its bytes are decoded and cached now
                self._fetcher.drop()
        if not self._background_off:
            self._background = self._spawn(self._fetch_rest())

    async def _fetch_rest(self) -> None:
        """Fetch every chunk not yet cached, through the scheduler (see _fetch_in_background)."""
        # the chunk list is 10-200 ms of CPU (8,000-100,000 files): made once the daemon is
        # quiet and on a thread, so neither a Prepare's wait nor a reader waits for it
        await self.scheduler.until_quiet()
        chunks = await asyncio.to_thread(lambda: self.all_chunks)
        with span("background", layer=self._digest) as traced, \
                opmetrics.timed(opmetrics.BACKGROUND_FETCH_TOTAL, self._digest):
            failures = await self._fetch_groups(chunks, "background")
            traced.set(bytes=self._stats.fetched_background, failures=failures)
        self._stats.background_complete = failures == 0 and not self._background_off

    async def _fetch_groups(self, chunks: list[Chunk], kind: FetchKind) -> int:
        """Load ``chunks`` in groups with ``max_concurrency`` workers; the number of groups
        that failed. Background groups go through the process's scheduler."""
        batch = self.config.background_batch_bytes
        groups = _groups(chunks, batch, PLAIN_PER_COMPRESSED * batch)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            while groups and not (kind == "background" and self._background_off):
                group = groups.pop(0)
                try:
                    if kind == "background":
                        await self._fetch_in_background(group)
                    else:
                        await self.load(group, kind)
                except StargzError as err:
                    failures += 1
                    self._stats.last_error = str(err)
                    log.warning("layer %s: %s fetch: %s", self._digest, kind, err)

        await asyncio.gather(*(worker() for _ in range(self.config.max_concurrency)))
        return failures

    async def close(self) -> None:
        """Stop fetches still running (their waiters get a TransportError)."""
        self._background_off = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _as_stargz(err: BaseException) -> StargzError:
    if isinstance(err, StargzError):
        return err
    if isinstance(err, asyncio.CancelledError):
        return TransportError("fetch cancelled (layer closed)")
    return TransportError(f"fetch failed: {type(err).__name__}: {err}")


def _groups(chunks: list[Chunk], max_compressed: int, max_plain: int) -> list[list[Chunk]]:
    """Consecutive chunks in groups of about ``max_compressed`` compressed bytes and at most
    about ``max_plain`` decoded ones; chunks sharing a member stay in one group so the member
    is fetched (and decoded) once."""
    groups: list[list[Chunk]] = []
    compressed = plain = 0
    for chunk in chunks:
        same_member = bool(groups) and groups[-1][-1].compressed_offset == chunk.compressed_offset
        full = compressed >= max_compressed or plain + chunk.chunk_size > max_plain
        if not groups or (full and not same_member):
            groups.append([])
            compressed = plain = 0
        groups[-1].append(chunk)
        plain += chunk.chunk_size
        if not same_member:
            compressed += chunk.compressed_size
    return groups


def _by_compressed_size(chunks: list[Chunk], parts: int, least: int) -> list[list[Chunk]]:
    """``chunks`` cut into at most ``parts`` runs of about equal compressed size, a member's
    chunks in one run (each member is decoded once); one run when under ``least`` bytes."""
    total = sum(c.compressed_size for c in chunks)
    if parts < 2 or total < least:
        return [chunks]
    runs: list[list[Chunk]] = [[]]
    done = 0
    for chunk in chunks:
        same_member = bool(runs[-1]) and runs[-1][-1].compressed_offset == chunk.compressed_offset
        if runs[-1] and not same_member and done >= total * len(runs) / parts:
            runs.append([])
        runs[-1].append(chunk)
        if not same_member:
            done += chunk.compressed_size
    return runs


def _check_chunk_limits(blob: VerifiedBlob, max_chunk_bytes: int) -> None:
    """This layer's own bound (its TOC may have been opened under another config): every
    chunk is looked at only when the TOC's largest ones are over it, to name the first."""
    plain, compressed = blob.largest_chunk()
    if plain <= max_chunk_bytes and compressed <= 2 * max_chunk_bytes:
        return
    for chunk in blob.chunks_in_blob_order():
        if chunk.inner_offset + chunk.chunk_size > max_chunk_bytes or \
                chunk.compressed_size > 2 * max_chunk_bytes:
            raise TOCError(f"{chunk.path!r}: the chunk at {chunk.chunk_offset} is over the "
                           f"limit of {max_chunk_bytes} bytes (limits.max_chunk_bytes)")


def _shared_members(chunks: list[Chunk]) -> dict[int, list[Chunk]]:
    """The chunks of each member holding several, by the member's offset."""
    by_member: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_member.setdefault(chunk.compressed_offset, []).append(chunk)
    return {k: v for k, v in by_member.items() if len(v) > 1}


async def mount(
    fetcher: BlobFetcher,
    digest: str,
    toc_digest: str | None,
    cache: ChunkCache,
    config: Config,
    skip_verification_reason: str | None = None,
    scheduler: BackgroundScheduler | None = None,
) -> Layer:
    """Open a layer, start its prefetch and background fetch, and wait for the prefetch up to
    ``prefetch_timeout_sec`` (reads still work while it runs)."""
    with opmetrics.timed(opmetrics.MOUNT, digest):
        layer = await Layer.open(fetcher, digest, toc_digest, cache, config,
                                 skip_verification_reason, scheduler)
        layer.start()
        await layer.wait_prefetch()
    return layer

