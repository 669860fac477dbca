"""A link-shaping TCP relay for the lazy-pull benchmark (run as its own process).

    python bench/_pull_shaper.py LISTEN_PORT UPSTREAM_HOST:PORT [--rate-mbit 100] [--delay-ms 5]

Listens on 127.0.0.1:LISTEN_PORT and relays every connection to the upstream. Each direction
of the link is one token bucket shared by all connections (so parallel requests share the
100 Mbit/s, as on one real link), and every chunk is held `delay-ms` before it goes out, in
both directions (round trip + 2 x delay). Delay is pipelined: chunks queue with their arrival
time, so the delay adds latency without capping throughput; the queue is bounded so TCP
back-pressure still reaches the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

CHUNK = 16 * 1024  # small pieces keep the bucket's bursts close to TBF's
QUEUE_CHUNKS = 256  # 4 MiB in flight per direction of a connection at most
BURST_S = 0.002  # the bucket may run this far ahead of the clock (~25 kB at 100 Mbit/s)


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


async def _read_side(reader: asyncio.StreamReader,
                     queue: asyncio.Queue[tuple[float, bytes]]) -> None:
    while data := await reader.read(CHUNK):
        await queue.put((time.monotonic(), data))
    await queue.put((time.monotonic(), b""))


async def _write_side(writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]],
                      bucket: TokenBucket, delay_s: float) -> None:
    while True:
        arrived, data = await queue.get()
        hold = arrived + delay_s - time.monotonic()
        if hold > 0:
            await asyncio.sleep(hold)
        if not data:
            with contextlib.suppress(OSError):
                writer.write_eof()
            return
        await bucket.take(len(data))
        writer.write(data)
        await writer.drain()


async def _one_way(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   bucket: TokenBucket, delay_s: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
    await asyncio.gather(_read_side(reader, queue), _write_side(writer, queue, bucket, delay_s))


class Shaper:
    def __init__(self, upstream: tuple[str, int], rate_mbit: float, delay_ms: float) -> None:
        self.upstream = upstream
        self.down = TokenBucket(rate_mbit * 1e6 / 8)  # registry -> client
        self.up = TokenBucket(rate_mbit * 1e6 / 8)  # client -> registry
        self.delay_s = delay_ms / 1000

    async def handle(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_one_way(client_r, server_w, self.up, self.delay_s),
                                 _one_way(server_r, client_w, self.down, self.delay_s))
        except OSError:
            pass  # a reset on either side ends the connection, as it would on a real link
        finally:
            for writer in (client_w, server_w):
                writer.close()


async def serve(port: int, shaper: Shaper) -> None:
    server = await asyncio.start_server(shaper.handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"shaping 127.0.0.1:{port} -> {shaper.upstream[0]}:{shaper.upstream[1]}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("upstream", help="HOST:PORT")
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="added each way")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    asyncio.run(serve(args.port, Shaper((host, int(port)), args.rate_mbit, args.delay_ms)))


if __name__ == "__main__":
    main()
