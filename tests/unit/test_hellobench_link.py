"""HelloBench's emulated link (stargz.hellobench.link): the relay carries bytes intact both ways
(and the end of a stream), shaped or not; it counts exactly what the upstream sent, per sample;
its link clock charges every byte; the round trip it adds is there."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from stargz.hellobench.link import LinkRelay, TokenBucket
from stargz.hellobench.model import Link

SHAPED = Link("shaped", 2000.0, 2.0)
UNSHAPED = Link("unthrottled", None, 0.0)


@pytest.fixture(name="reverser")
def reverser_fixture() -> Iterator[str]:
    """An upstream that reads everything a client sends, answers it reversed, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                conn.sendall(_read_all(conn)[::-1])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def _read_all(conn: socket.socket) -> bytes:
    return b"".join(iter(lambda: conn.recv(1 << 16), b""))


def _exchange(host: str, payload: bytes) -> bytes:
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port))) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)  # the half-close must reach the upstream through the relay
        return _read_all(conn)


@pytest.mark.parametrize("link", [SHAPED, UNSHAPED], ids=lambda link: link.name)
def test_relay_carries_bytes_both_ways_and_counts_what_the_upstream_sent(
        reverser: str, link: Link) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many relay chunks, an odd tail
    with LinkRelay(reverser, link) as relay:
        assert _exchange(relay.host, payload) == payload[::-1]
        assert relay.served_bytes == len(payload)
        assert relay.reset() == len(payload)
        assert relay.served_bytes == 0
        assert _exchange(relay.host, b"abc") == b"cba"
        assert relay.served_bytes == 3  # a sample counts only its own bytes


def test_the_link_adds_its_round_trip(reverser: str) -> None:
    with LinkRelay(reverser, Link("slow", None, 200.0)) as relay:
        started = time.monotonic()
        assert _exchange(relay.host, b"x") == b"x"
        # 100 ms each way: the request and the answer each held that long
        assert time.monotonic() - started >= 0.2


def test_token_bucket_charges_every_byte_at_the_link_rate() -> None:
    bucket = TokenBucket(rate_bytes_s=1e9)
    started = time.monotonic()

    async def send() -> None:
        for _ in range(10):
            await bucket.take(1_000_000)

    asyncio.run(send())
    # 10 MB at 1 GB/s: the link is busy until at least 10 ms after the first byte
    assert bucket.free_at >= started + 0.010


def test_describe_says_how_the_link_is_emulated() -> None:
    assert "no shaping" in UNSHAPED.describe()
    text = Link("100mbit-10ms", 100, 10).describe()
    assert "100 Mbit/s" in text and "10 ms round trip" in text and "token-bucket" in text
