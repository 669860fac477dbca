"""The process's background scheduler over real layers sharing it: an on-demand read on one layer
preempts the background fetch of another, background waits for the quiet period, at most N
background fetches run at once, and a read found in memory is answered without suspending."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.estargz.reader import TAIL_READ
from stargz.layer import BackgroundScheduler, Layer
from stargz.remote import BlobFetcher, FileBlobFetcher, Range
from tests.unit.test_layer_helpers import Built, build_blob, payload

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def plain_layer(tmp: Path, name: str, seed: int) -> Built:
    files = {f"lib/{name}{i}.bin": payload(seed + i, 40000) for i in range(8)}
    return build_blob(tmp, files, name=name, chunk_size=10000, level=1)


class Recorder:
    """A blob fetcher that notes when each data request starts and how it ends, in one log
    shared by every layer; requests can be held until ``release`` is set."""

    def __init__(self, name: str, inner: BlobFetcher, log: list[tuple[str, str, float]],
                 hold: bool = False) -> None:
        self.name, self.inner, self.log = name, inner, log
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.asked = asyncio.Event()
        self.running = 0
        self.most_running = 0

    @property
    def size(self) -> int:
        return self.inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        if ranges == [(max(0, self.size - TAIL_READ), self.size)]:
            return await self.inner.fetch(ranges)  # opening the layer: footer and TOC
        self.log.append((self.name, "asked", time.monotonic()))
        self.asked.set()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            await asyncio.sleep(0.005)  # the wire
            data = await self.inner.fetch(ranges)
        except asyncio.CancelledError:
            self.log.append((self.name, "cancelled", time.monotonic()))
            raise
        finally:
            self.running -= 1
        self.log.append((self.name, "answered", time.monotonic()))
        return data


async def open_layer(built: Built, fetcher: Recorder, config: Config,
                     scheduler: BackgroundScheduler) -> Layer:
    return await Layer.open(fetcher, built.path.name, built.result.toc_digest,
                            TieredCache(MemoryCache(64 << 20)), config, scheduler=scheduler)


def test_an_on_demand_read_on_one_layer_preempts_background_fetches_on_another(
        tmp_path: Path) -> None:
    one, two = plain_layer(tmp_path, "a", 0), plain_layer(tmp_path, "b", 100)
    log: list[tuple[str, str, float]] = []
    config = Config(background_quiet_sec=0, max_concurrency=1)
    scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)

    async def go() -> None:
        a_fetcher = Recorder("a", FileBlobFetcher(one.path), log)
        b_fetcher = Recorder("b", FileBlobFetcher(two.path), log, hold=True)
        a = await open_layer(one, a_fetcher, config, scheduler)
        b = await open_layer(two, b_fetcher, config, scheduler)
        b.start()
        await b_fetcher.asked.wait()  # b's background fetch is on the wire
        assert scheduler.background_running == 1
        data = await a.read("lib/a3.bin", 0, 1 << 20)  # answered while b's registry is stuck
        assert data == one.files["lib/a3.bin"]
        assert ("b", "cancelled") in [(n, what) for n, what, _ in log]
        assert scheduler.preempted == 1
        b_fetcher.release.set()
        await b.wait_background()
        assert b.stats().background_complete
        for name, content in two.files.items():
            assert await b.read(name, 0, 1 << 20) == content
        # b asked again after being cancelled, and only after a's read was answered
        a_answered = next(t for n, what, t in log if (n, what) == ("a", "answered"))
        b_cancelled = next(t for n, what, t in log if (n, what) == ("b", "cancelled"))
        asked_again = [t for n, what, t in log if (n, what) == ("b", "asked") and t > b_cancelled]
        assert asked_again and min(asked_again) >= a_answered

    asyncio.run(go())


def test_background_waits_for_the_quiet_period_after_prioritized_work(tmp_path: Path) -> None:
    one, two = plain_layer(tmp_path, "a", 0), plain_layer(tmp_path, "b", 100)
    log: list[tuple[str, str, float]] = []
    quiet = 0.3
    config = Config(background_quiet_sec=quiet)
    scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)

    async def go() -> None:
        a = await open_layer(one, Recorder("a", FileBlobFetcher(one.path), log), config,
                             scheduler)
        b = await open_layer(two, Recorder("b", FileBlobFetcher(two.path), log), config,
                             scheduler)
        b.start()  # nothing to prefetch: straight to the background fetch
        await a.read("lib/a0.bin", 0, 100)
        # The scheduler's own deadline (taken after the read, so never later than it): the
        # test's clock after the read may be later than the scheduler's end of the work.
        deadline = time.monotonic() + scheduler.quiet_in()
        work_answered = max(t for n, what, t in log if (n, what) == ("a", "answered"))
        assert deadline >= work_answered + quiet  # the quiet period follows the work
        await b.wait_background()
        assert b.stats().background_complete
        first_background = min(t for n, what, t in log if (n, what) == ("b", "asked"))
        assert first_background >= deadline  # a sleep's lower bound, not a race

    asyncio.run(go())


def test_prefetch_is_prioritized_work(tmp_path: Path) -> None:
    plain = plain_layer(tmp_path, "b", 100)
    files = {f"app/p{i}.bin": payload(200 + i, 30000) for i in range(3)}
    files.update({f"lib/x{i}.bin": payload(300 + i, 30000) for i in range(3)})
    landmarked = build_blob(tmp_path, files, name="p", chunk_size=10000, level=1,
                            prioritized=("app/p0.bin", "app/p1.bin", "app/p2.bin"))
    log: list[tuple[str, str, float]] = []
    config = Config(background_quiet_sec=0)
    scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)

    async def go() -> None:
        held = Recorder("p", FileBlobFetcher(landmarked.path), log, hold=True)
        p = await open_layer(landmarked, held, config, scheduler)
        b = await open_layer(plain, Recorder("b", FileBlobFetcher(plain.path), log), config,
                             scheduler)
        p.start()
        await held.asked.wait()  # p's prefetch is stuck on the wire
        b.start()
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert not [e for e in log if e[0] == "b"]  # no background while a prefetch runs
        held.release.set()
        assert await p.wait_prefetch()
        await b.wait_background()
        assert b.stats().background_complete

    asyncio.run(go())


def test_at_most_max_concurrency_background_fetches_across_layers(tmp_path: Path) -> None:
    builts = [plain_layer(tmp_path, name, 100 * i) for i, name in enumerate("abc")]
    log: list[tuple[str, str, float]] = []
    config = Config(background_quiet_sec=0, max_concurrency=2, background_batch_bytes=20000)
    scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)
    running = 0
    most = 0

    class Shared(Recorder):
        async def fetch(self, ranges: list[Range]) -> list[bytes]:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                return await super().fetch(ranges)
            finally:
                running -= 1

    async def go() -> None:
        layers = [await open_layer(b, Shared(b.path.name, FileBlobFetcher(b.path), log),
                                   config, scheduler) for b in builts]
        for layer in layers:
            layer.start()
        for layer in layers:
            await layer.wait_background()
            assert layer.stats().background_complete

    asyncio.run(go())
    assert most == 2  # three layers with two workers each, two slots in the process


def test_a_read_found_in_memory_is_answered_without_suspending(tmp_path: Path) -> None:
    built = plain_layer(tmp_path, "a", 0)
    config = Config(no_background_fetch=True)

    async def go() -> None:
        layer = await Layer.open(FileBlobFetcher(built.path), A, built.result.toc_digest,
                                 TieredCache(MemoryCache(64 << 20)), config)
        want = built.files["lib/a2.bin"]
        assert await layer.read("lib/a2.bin", 0, 1 << 20) == want  # fetched: now in memory
        reading = layer.read("lib/a2.bin", 5, 30000)
        try:
            reading.send(None)  # runs to the end without ever awaiting: no task, no thread
        except StopIteration as done:
            assert done.value == want[5:30005]
        else:
            raise AssertionError("a memory hit suspended the reader")
        finally:
            reading.close()

    asyncio.run(go())
