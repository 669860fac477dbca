"""The layer service over real blobs in files: one resolution per blob however many ask, use
counts, eviction of unused layers, retry after a failure, and Prepare's wait for the prefetch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.errors import InvalidArgumentError, TOCDigestMismatch, TransportError
from stargz.estargz.reader import TAIL_READ
from stargz.layer.service import LayerService
from stargz.registry.reference import Reference
from stargz.remote import BlobFetcher, CountingFetcher, FileBlobFetcher, Range
from tests.unit.test_layer_helpers import Built, SwitchableFetcher, build_blob, payload

REPO = Reference.parse("registry.test/app")
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
QUICK = Config(no_background_fetch=True)


class Blobs:
    """Where the service's blobs come from: files, each opened fetcher counted."""

    def __init__(self, built: dict[str, Built]) -> None:
        self.built = built
        self.opened: list[str] = []
        self.fetchers: dict[str, list[CountingFetcher]] = {}
        self.wrap: Callable[[BlobFetcher], BlobFetcher] = lambda f: f

    async def open(self, repo: Reference, digest: str, size: int | None) -> BlobFetcher:
        self.opened.append(digest)
        await asyncio.sleep(0)  # a registry would answer a HEAD here
        counting = CountingFetcher(self.wrap(FileBlobFetcher(self.built[digest].path)))
        self.fetchers.setdefault(digest, []).append(counting)
        return counting

    def requests(self, digest: str) -> list[list[Range]]:
        return [r for f in self.fetchers.get(digest, []) for r in f.requests]


def two_blobs(tmp: Path, a_file_size: int = 30000) -> dict[str, Built]:
    one = {f"lib/a{i}.bin": payload(i, a_file_size) for i in range(6)}
    one["app/run.bin"] = payload(50, 20000)
    two = {f"share/b{i}.bin": payload(100 + i, 30000) for i in range(4)}
    return {
        A: build_blob(tmp, one, name="a", chunk_size=10000, level=1,
                      prioritized=("app/run.bin",)),
        B: build_blob(tmp, two, name="b", chunk_size=10000, level=1),
    }


def service(blobs: Blobs, config: Config = QUICK) -> LayerService:
    return LayerService(config, cache=TieredCache(MemoryCache(64 << 20)), open_fetcher=blobs.open)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def tail_only(blobs: Blobs, digest: str) -> bool:
    size = blobs.built[digest].result.blob_size
    return blobs.requests(digest) == [[(max(0, size - TAIL_READ), size)]]


def test_concurrent_acquires_share_one_resolution_and_one_layer(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[B].result.toc_digest

    async def go() -> None:
        async with service(blobs) as layers:
            layers.resolve_soon(REPO, B)  # the image's other layer, as a Prepare does
            got = await asyncio.gather(*(layers.acquire(REPO, B, toc) for _ in range(5)))
            assert all(layer is got[0] for layer in got)
            assert layers.uses(B) == 5
            assert blobs.opened == [B]  # one HEAD, one footer+TOC read, one verification
            assert tail_only(blobs, B)
            assert await got[0].read("share/b2.bin", 0, 1 << 20) == blobs.built[B].files[
                "share/b2.bin"]

    run(go)


def test_released_layers_stay_resolved_until_evicted(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    tocs = {d: b.result.toc_digest for d, b in blobs.built.items()}
    config = Config(no_background_fetch=True, resolve_result_entry=1)

    async def go() -> None:
        async with service(blobs, config) as layers:
            first = await layers.acquire(REPO, A, tocs[A])
            await layers.release(A)
            assert layers.uses(A) == 0 and layers.resolved() == [A]  # kept for a re-Prepare
            fetched = len(blobs.requests(A))
            again = await layers.acquire(REPO, A, tocs[A])
            assert again is not first  # the old one's fetches were stopped at release
            assert blobs.opened == [A] and len(blobs.requests(A)) == fetched  # free
            await layers.release(A)
            await layers.acquire(REPO, B, tocs[B])
            await layers.release(B)
            assert layers.resolved() == [B]  # over the bound of 1: A, unused longest, went
            await layers.acquire(REPO, A, tocs[A])
            assert blobs.opened == [A, B, A]  # resolved again

    run(go)


def test_a_layer_in_use_is_never_evicted_and_unused_ones_expire(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    tocs = {d: b.result.toc_digest for d, b in blobs.built.items()}
    config = Config(no_background_fetch=True, resolve_result_entry=0,
                    resolve_result_entry_ttl_sec=0)

    async def go() -> None:
        async with service(blobs, config) as layers:
            held = await layers.acquire(REPO, A, tocs[A])
            layers.resolve_soon(REPO, B)
            await layers.acquire(REPO, B, tocs[B])
            await layers.release(B)
            for _ in range(100):  # the expiry task runs at the next turns of the loop
                if layers.resolved() == [A]:
                    break
                await anyio.sleep(0)
            assert layers.resolved() == [A] and layers.uses(A) == 1
            assert await held.read("lib/a1.bin", 0, 10) == blobs.built[A].files["lib/a1.bin"][:10]

    run(go)


def test_a_failed_resolution_is_retried_by_the_next_caller(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[A].result.toc_digest
    switches: list[SwitchableFetcher] = []

    def down(fetcher: BlobFetcher) -> BlobFetcher:
        switch = SwitchableFetcher(fetcher)
        switch.up = False
        switches.append(switch)
        return switch

    async def go() -> None:
        async with service(blobs) as layers:
            blobs.wrap = down
            failed = await asyncio.gather(*(layers.acquire(REPO, A, toc) for _ in range(3)),
                                          return_exceptions=True)
            assert all(isinstance(e, TransportError) for e in failed)
            assert blobs.opened == [A]  # the three shared the one failed attempt
            assert layers.resolved() == [] and layers.uses(A) == 0
            blobs.wrap = lambda f: f
            layer = await layers.acquire(REPO, A, toc)
            assert blobs.opened == [A, A] and layers.uses(A) == 1
            assert await layer.read("lib/a0.bin", 0, 5) == blobs.built[A].files["lib/a0.bin"][:5]

    run(go)


def test_a_wrong_toc_digest_is_refused_and_takes_no_use(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    toc = blobs.built[A].result.toc_digest

    async def go() -> None:
        async with service(blobs) as layers:
            with pytest.raises(TOCDigestMismatch):
                await layers.acquire(REPO, A, "sha256:" + "0" * 64)
            assert layers.uses(A) == 0
            await layers.acquire(REPO, A, toc)
            with pytest.raises(TOCDigestMismatch):  # verified once: the other is refused
                await layers.acquire(REPO, A, "sha256:" + "0" * 64)
            assert layers.uses(A) == 1 and blobs.opened == [A]

    run(go)


class HeldData:
    """A slow registry: after the first request (footer and TOC), requests wait for
    ``release``; what happened goes to ``log`` in order."""

    def __init__(self, inner: BlobFetcher, log: list[str]) -> None:
        self.inner, self.log = inner, log
        self.release = asyncio.Event()
        self.requests = 0

    @property
    def size(self) -> int:
        return self.inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        self.requests += 1
        if self.requests == 1:
            return await self.inner.fetch(ranges)
        self.log.append("prefetch asked")
        await self.release.wait()
        data = await self.inner.fetch(ranges)
        self.log.append("prefetch answered")
        return data


def prefetch_case(tmp_path: Path, timeout: float, hold: bool) -> list[str]:
    """Acquire a layer whose landmark asks for a prefetch, the registry answering it at once
    (or only after the acquire returned, when ``hold``); the order things happened in.
    A is made bigger than the footer+TOC tail read: its prefetch range is fetched, not held."""
    blobs = Blobs(two_blobs(tmp_path, a_file_size=100000))
    built = blobs.built[A]
    log: list[str] = []
    held: list[HeldData] = []

    def slow(fetcher: BlobFetcher) -> BlobFetcher:
        held.append(HeldData(fetcher, log))
        if not hold:
            held[-1].release.set()
        return held[-1]

    blobs.wrap = slow
    config = Config(no_background_fetch=True, prefetch_timeout_sec=timeout)

    async def go() -> None:
        async with service(blobs, config) as layers:
            layer = await layers.acquire(REPO, A, built.result.toc_digest)
            log.append(f"acquire returned, prefetch complete: {layer.stats().prefetch_complete}")
            held[0].release.set()
            assert await layer.wait_prefetch()
            assert layer.stats().prefetch_complete
            assert layer.stats().fetched_prefetch > 0

    run(go)
    return log


def test_prepare_waits_for_a_fast_prefetch(tmp_path: Path) -> None:
    assert prefetch_case(tmp_path, timeout=60, hold=False) == [
        "prefetch asked", "prefetch answered", "acquire returned, prefetch complete: True"]


def test_prepare_waits_for_a_slow_prefetch_only_until_the_timeout(tmp_path: Path) -> None:
    assert prefetch_case(tmp_path, timeout=0.2, hold=True) == [
        "prefetch asked", "acquire returned, prefetch complete: False", "prefetch answered"]


@pytest.mark.parametrize(("timeout", "waited"), [(60, True), (0.2, False)])
def test_wait_prefetch_waits_for_an_acquired_layer_up_to_the_timeout(
        tmp_path: Path, timeout: float, waited: bool) -> None:
    """What the snapshotter's Check does: acquire without waiting, wait for the prefetch
    later (up to prefetch_timeout_sec), the registry holding the prefetch range meanwhile."""
    blobs = Blobs(two_blobs(tmp_path, a_file_size=100000))
    log: list[str] = []
    held: list[HeldData] = []

    def slow(fetcher: BlobFetcher) -> BlobFetcher:
        held.append(HeldData(fetcher, log))
        return held[-1]

    blobs.wrap = slow
    config = Config(no_background_fetch=True, prefetch_timeout_sec=timeout)

    async def go() -> None:
        async with service(blobs, config) as layers:
            layer = await layers.acquire(REPO, A, blobs.built[A].result.toc_digest,
                                         wait_prefetch=False)
            assert not layer.stats().prefetch_complete  # the registry holds the range
            with pytest.raises(InvalidArgumentError, match="not in use"):
                await layers.wait_prefetch(B)
            async with anyio.create_task_group() as group:
                async def wait() -> None:
                    done = await layers.wait_prefetch(A)
                    log.append(f"wait_prefetch: {done}, complete: "
                               f"{layer.stats().prefetch_complete}")
                    held[0].release.set()

                group.start_soon(wait)
                if waited:  # released once the prefetch is asked for and being waited for
                    while "prefetch asked" not in log:
                        await anyio.sleep(0.01)
                    log.append("releasing")
                    held[0].release.set()
            assert await layer.wait_prefetch()

    run(go)
    last = (["releasing", "prefetch answered", "wait_prefetch: True, complete: True"] if waited
            else ["wait_prefetch: False, complete: False", "prefetch answered"])
    assert log[-len(last):] == last


def test_the_service_needs_to_be_running(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))

    async def go() -> None:
        layers = service(blobs)
        with pytest.raises(Exception, match="not running"):
            await layers.acquire(REPO, A, blobs.built[A].result.toc_digest)

    run(go)


def test_a_stalled_registry_fails_the_resolution_within_the_fetch_timeout(tmp_path: Path) -> None:
    blobs = Blobs(two_blobs(tmp_path))
    stalled = anyio.Event()

    async def never_answers(repo: Reference, digest: str, size: int | None) -> BlobFetcher:
        stalled.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    config = replace(QUICK, blob=replace(QUICK.blob, fetch_timeout_sec=0.2))

    async def test() -> None:
        async with LayerService(config, cache=TieredCache(MemoryCache(1 << 20)),
                                open_fetcher=never_answers) as svc:
            with anyio.fail_after(30):  # a hang fails the test instead of holding it
                with pytest.raises(TransportError, match="fetching_timeout_sec"):
                    await svc.acquire(REPO, A, blobs.built[A].result.toc_digest)
        assert stalled.is_set()

    run(test)
