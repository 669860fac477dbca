"""Opening a layer from the real CNCF registry without knowing its size: one suffix-range GET
(``Range: bytes=-N``) gives the blob's size and its footer and TOC, so no HEAD is sent; the
bytes served afterwards are the file's, verified."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.layer.service import LayerService
from stargz.registry import HostsConfig, Reference, RegistryClient, RetryPolicy
from tests.support import registry as support
from tests.unit.test_layer_helpers import build_blob, payload

pytestmark = pytest.mark.integration
FAST = RetryPolicy(max_retries=2, initial_backoff=0.01)
BLOB = bytes((i * 7 + i // 251) % 256 for i in range(300_000))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    with support.run_registry(tmp_path_factory.mktemp("tail")) as running:
        yield running


LOG_WAIT_S = 10.0  # a bound on waiting for the registry's access log, not a measure


async def logged_after(registry: support.RunningRegistry, digest: str, seen: int,
                       count: int = 1) -> list[str]:
    """The blob's requests after the first ``seen``, once the registry has logged ``count``
    more: it writes its access line after answering, so a line can come after the answer."""
    deadline = asyncio.get_running_loop().time() + LOG_WAIT_S
    while len(requests := support.blob_requests(registry, digest)) < seen + count:
        assert asyncio.get_running_loop().time() < deadline, "the registry logged no request"
        await asyncio.sleep(0.05)
    return requests[seen:]


def client_for(reg: support.RunningRegistry) -> RegistryClient:
    return RegistryClient(HostsConfig.create(reg.hosts_dir()), retry=FAST)


def test_a_suffix_range_gives_the_size_and_the_tail(registry: support.RunningRegistry) -> None:
    ref = Reference.parse(f"{registry.host}/tail/raw")

    async def scenario() -> tuple[list[str], tuple[int, bytes], tuple[int, bytes]]:
        async with client_for(registry) as client:
            digest = await client.push_blob(ref, BLOB)
            pushed = len(await logged_after(registry, digest, 0))  # its HEAD: is it there?
            short = await client.read_blob_tail(ref, digest, 1000)
            whole = await client.read_blob_tail(ref, digest, 1 << 20)
            return await logged_after(registry, digest, pushed, count=2), short, whole

    read, short, whole = asyncio.run(scenario())
    assert short == (len(BLOB), BLOB[-1000:])
    assert whole == (len(BLOB), BLOB)  # longer than the blob: all of it
    assert read == ["GET", "GET"]  # no HEAD


def test_a_layer_opens_with_one_request_and_no_head(registry: support.RunningRegistry,
                                                     tmp_path: Path) -> None:
    files = {f"lib/m{i}.bin": payload(i, 20000) for i in range(5)}
    built = build_blob(tmp_path, files, chunk_size=8000, level=1)
    ref = Reference.parse(f"{registry.host}/tail/layer")

    async def scenario() -> tuple[str, list[str], bytes]:
        async with client_for(registry) as client:
            digest = await client.push_blob(ref, built.path.read_bytes())
            pushed = len(await logged_after(registry, digest, 0))  # its HEAD: is it there?
            config = Config(no_background_fetch=True)
            async with LayerService(config, client,
                                    cache=TieredCache(MemoryCache(8 << 20))) as service:
                layer = await service.acquire(ref, digest, built.result.toc_digest)
                opened = await logged_after(registry, digest, pushed)
                data = await layer.read("lib/m3.bin", 0, 20000)
                await service.release(digest)
        return digest, opened, data

    _, opened, data = asyncio.run(scenario())
    assert opened == ["GET"]  # footer and TOC with the size: no HEAD before
    assert data == files["lib/m3.bin"]
