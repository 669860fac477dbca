"""The emulated link between the runtimes and the bench registry: a TCP relay on loopback.

Every connection to ``LinkRelay.host`` is relayed to the registry. With a rate, each direction
of the link is one token bucket shared by all connections (parallel requests share the
bandwidth, as on one real link), and every piece is held half the round trip before it goes out,
in both directions. The delay is pipelined (pieces queue with their arrival time), so it adds
latency without capping throughput; the queue is bounded so TCP back-pressure still reaches the
sender. Unthrottled, the relay only copies. Either way it counts the bytes the registry sent
(HTTP headers included), so bytes fetched are measured the same way for every runtime.

    with LinkRelay("127.0.0.1:5000", Link("100mbit-10ms", 100, 10)) as relay:
        relay.reset()                    # before a sample
        ... pull from relay.host ...
        fetched = relay.served_bytes     # what the registry sent since the reset

"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

from stargz.errors import RuntimeIntegrationError
from stargz.hellobench.model import Link

CHUNK = 16 * 1024  # small pieces keep the bucket's bursts close to a real link's
COPY_CHUNK = 256 * 1024  # unshaped: bigger reads cost the relay less CPU
QUEUE_CHUNKS = 256  # 4 MiB in flight per direction of a connection at most
BURST_S = 0.002  # the bucket may run this far ahead of the clock (~25 kB at 100 Mbit/s)
START_TIMEOUT_S = 10.0


class TokenBucket:
    """A link of `rate` bytes/s: a virtual clock of when the link is next free."""

    def __init__(self, rate_bytes_s: float) -> None:
        self.rate = rate_bytes_s
        self.free_at = 0.0

    async def take(self, size: int) -> None:
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + size / self.rate
        wait = self.free_at - now - BURST_S
        if wait > 0:
            await asyncio.sleep(wait)


class Counter:
    """Bytes that went one way; written by the relay's loop, read from any thread."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.total += size

    def take(self) -> int:
        """The count so far, and start again from zero."""
        with self._lock:
            total, self.total = self.total, 0
        return total


async def _read_side(reader: asyncio.StreamReader,
                     queue: asyncio.Queue[tuple[float, bytes]]) -> None:
    while data := await reader.read(CHUNK):
        await queue.put((time.monotonic(), data))
    await queue.put((time.monotonic(), b""))


async def _write_side(writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]],
                      bucket: TokenBucket | None, delay_s: float, counter: Counter) -> None:
    while True:
        arrived, data = await queue.get()
        hold = arrived + delay_s - time.monotonic()
        if hold > 0:
            await asyncio.sleep(hold)
        if not data:
            with contextlib.suppress(OSError):
                writer.write_eof()
            return
        if bucket is not None:
            await bucket.take(len(data))
        counter.add(len(data))
        writer.write(data)
        await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                counter: Counter) -> None:
    while data := await reader.read(COPY_CHUNK):
        counter.add(len(data))
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


class Shaper:
    """One direction pair of the link: buckets (None: unshaped) and the one-way delay."""

    def __init__(self, upstream: tuple[str, int], rate_mbit: float | None,
                 delay_ms: float) -> None:
        self.upstream = upstream
        rate = None if rate_mbit is None else rate_mbit * 1e6 / 8
        self.down = TokenBucket(rate) if rate else None  # registry -> client
        self.up = TokenBucket(rate) if rate else None  # client -> registry
        self.delay_s = delay_ms / 1000
        self.served = Counter()  # registry -> client
        self.sent = Counter()  # client -> registry

    async def _one_way(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       bucket: TokenBucket | None, counter: Counter) -> None:
        if bucket is None and self.delay_s == 0:
            await _copy(reader, writer, counter)
            return
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        await asyncio.gather(_read_side(reader, queue),
                             _write_side(writer, queue, bucket, self.delay_s, counter))

    async def handle(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(self._one_way(client_r, server_w, self.up, self.sent),
                                 self._one_way(server_r, client_w, self.down, self.served))
        except OSError:
            pass  # a reset on either side ends the connection, as it would on a real link
        finally:
            for writer in (client_w, server_w):
                writer.close()


def _split(host_port: str) -> tuple[str, int]:
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


class LinkRelay:
    """The relay on its own thread and event loop, listening on a free loopback port."""

    def __init__(self, upstream: str, link: Link) -> None:
        self.link = link
        self.shaper = Shaper(_split(upstream), link.rate_mbit, link.rtt_ms / 2)
        self.host = ""  # 127.0.0.1:PORT once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def served_bytes(self) -> int:
        """Bytes the registry sent through the link since the last reset."""
        return self.shaper.served.total

    def reset(self) -> int:
        """Start counting from zero (before a sample); returns the count it drops."""
        self.shaper.sent.take()
        return self.shaper.served.take()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"link {self.link.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._failure is not None:
            raise RuntimeIntegrationError(f"link relay did not start: {self._failure}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_S)
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # handed to start(), which raises it
            self._failure = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self.shaper.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        async with server:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> LinkRelay:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
