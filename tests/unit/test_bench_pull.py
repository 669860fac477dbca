"""The lazy-pull benchmark's own pieces: the shaping relay carries bytes intact both ways (and
the end of a stream), its link clock charges every byte; medians and ratios from run results."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str, path: Path) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # bench/pull imports its siblings by bare name
    try:
        spec = importlib.util.spec_from_loader(name, SourceFileLoader(name, str(path)))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


shaper = _load("bench_pull_shaper", BENCH / "_pull_shaper.py")


async def _echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upstream: read everything the client sent, answer it reversed, then close."""
    data = await reader.read()
    writer.write(data[::-1])
    await writer.drain()
    writer.close()


async def _through_relay(payload: bytes) -> bytes:
    upstream = await asyncio.start_server(_echo_upper, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    relay = shaper.Shaper(("127.0.0.1", up_port), rate_mbit=2000.0, delay_ms=1.0)
    front = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    front_port = front.sockets[0].getsockname()[1]
    async with upstream, front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # the half-close must reach the upstream through the relay
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
    return bytes(answer)


def test_relay_carries_bytes_both_ways_and_the_end_of_stream() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many relay chunks, an odd tail
    assert asyncio.run(_through_relay(payload)) == payload[::-1]


def test_token_bucket_charges_every_byte_at_the_link_rate() -> None:
    bucket = shaper.TokenBucket(rate_bytes_s=1e9)
    started = time.monotonic()

    async def send() -> None:
        for _ in range(10):
            await bucket.take(1_000_000)

    asyncio.run(send())
    # 10 MB at 1 GB/s: the link is busy until at least 10 ms after the first byte
    assert bucket.free_at >= started + 0.010


def test_medians_and_ratios_of_runs() -> None:
    pull = _load("bench_pull", BENCH / "pull")
    stack = sys.modules.get("_pull_stack") or _load("_pull_stack", BENCH / "_pull_stack.py")
    runs = []
    for mode, seconds, fetched in (("ours", (1.0, 0.1, 2.0), 5), ("ours", (3.0, 0.3, 4.0), 7),
                                   ("ours", (2.0, 0.2, 3.0), 6), ("go", (1.0, 0.1, 1.0), 4)):
        result = stack.RunResult(mode)
        result.seconds = dict(zip(stack.PHASES, seconds, strict=True))
        result.fetched = {phase: fetched * 1_000_000 for phase in stack.PHASES}
        runs.append(result)
    table = pull.medians(runs)
    assert table["ours"]["pull"] == 2.0 and table["ours"]["run"] == 3.0
    assert table["ours"]["total"] == 5.2  # median of the runs' totals, not a sum of medians
    assert table["ours"]["MB"] == 6.0 and table["go"]["MB"] == 4.0
    assert pull._ratio(table["ours"]["total"], table["go"]["total"]) == "2.48x"
