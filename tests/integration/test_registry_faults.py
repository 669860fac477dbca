"""RegistryClient through the fault-injecting proxy in front of the real registry: resets, 5xx,
429, truncated bodies and stalls are retried and the bytes come out right, or a clear
TransportError once the retries are spent. The proxy's counts show what was fetched."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from stargz.errors import TransportError
from stargz.registry import HostsConfig, Reference, RegistryClient, RetryPolicy
from tests.support import registry as support
from tests.support.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.integration
BLOB = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
RETRY = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.05, timeout=0.5)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    with support.run_registry(tmp_path_factory.mktemp("faults")) as running:
        ref = Reference.parse(f"{running.host}/test/blob")
        client = RegistryClient(HostsConfig.create(insecure_hosts=[running.host]))
        asyncio.run(_push(client, ref))
        yield running


async def _push(client: RegistryClient, ref: Reference) -> None:
    async with client:
        await client.push_blob(ref, BLOB)


@pytest.fixture
def proxy(upstream: support.RunningRegistry) -> Iterator[FaultProxy]:
    host, port = upstream.host.split(":")
    with FaultProxy(host, int(port)) as running:
        yield running


def run(proxy: FaultProxy, call: Any) -> Any:
    ref = Reference.parse(f"{proxy.host}/test/blob")

    async def main() -> Any:
        hosts = HostsConfig.create(insecure_hosts=[proxy.host])
        async with RegistryClient(hosts, retry=RETRY) as client:
            return await call(client, ref)

    return asyncio.run(main())


def read_range(start: int, end: int) -> Any:
    return lambda client, ref: client.read_blob_range(ref, DIGEST, start, end)


@pytest.mark.parametrize("fault", [
    Fault("reset", "/blobs/", times=2),
    Fault("status", "/blobs/", times=2, status=500),
    Fault("status", "/blobs/", times=1, status=503),
    Fault("status", "/blobs/", times=2, status=429, retry_after="0"),
    Fault("truncate", "/blobs/", times=2),
    Fault("stall", "/blobs/", times=1, stall_seconds=5),
], ids=["reset", "500", "503", "429", "truncate", "stall"])
def test_range_read_survives(proxy: FaultProxy, fault: Fault) -> None:
    expected_faults = fault.times
    proxy.add_fault(fault)
    assert run(proxy, read_range(1000, 201_000)) == BLOB[1000:201_000]
    served = proxy.served("/blobs/")
    assert [s.fault for s in served] == [fault.kind] * expected_faults + [None]
    assert served[-1].status == 206 and served[-1].body_bytes == 200_000


def test_streamed_download_resumes_after_truncation(proxy: FaultProxy) -> None:
    proxy.add_fault(Fault("truncate", "/blobs/", keep_fraction=0.25))
    got = run(proxy, lambda client, ref: client.get_blob(ref, DIGEST))
    assert got == BLOB
    first, second = proxy.served("/blobs/")
    assert first.fault == "truncate" and first.range is None
    assert second.range == f"bytes={first.body_bytes}-"
    # Resuming fetched only the rest: the blob crossed the wire once in total.
    assert first.body_bytes + second.body_bytes == len(BLOB)


def test_multi_range_fetches_only_what_was_asked(proxy: FaultProxy) -> None:
    ranges = [(0, 100), (500_000, 510_000), (1_279_000, 1_280_000)]
    got = run(proxy, lambda client, ref: client.read_blob_ranges(ref, DIGEST, ranges))
    assert got == [BLOB[a:b] for a, b in ranges]
    [served] = proxy.served("/blobs/", method="GET")
    assert served.range == "bytes=0-99,500000-509999,1279000-1279999"
    wanted = sum(b - a for a, b in ranges)
    assert wanted <= served.body_bytes < wanted + 1000  # multipart headers only on top


def test_persistent_failure_is_a_clear_transport_error(proxy: FaultProxy) -> None:
    proxy.add_fault(Fault("status", "/blobs/", times=100, status=503))
    with pytest.raises(TransportError) as info:
        run(proxy, read_range(0, 10))
    message = str(info.value)
    assert "HTTP 503" in message and "gave up after 4 attempts" in message
    assert "\n" not in message
    assert len(proxy.served("/blobs/")) == RETRY.max_retries + 1


def test_persistent_stall_is_a_transport_error(proxy: FaultProxy) -> None:
    proxy.add_fault(Fault("stall", "/blobs/", times=100, stall_seconds=5, keep_fraction=0.1))
    with pytest.raises(TransportError, match="timed out"):
        run(proxy, read_range(0, 100_000))
    assert len(proxy.served("/blobs/")) == RETRY.max_retries + 1


def test_manifest_push_and_head_through_faults(proxy: FaultProxy) -> None:
    proxy.add_fault(Fault("reset", "/manifests/", times=1))
    proxy.add_fault(Fault("status", "/blobs/", method="HEAD", times=1, status=502))
    raw = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
           b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'
           + DIGEST.encode() + b'","size":%d},"layers":[]}' % len(BLOB))

    async def call(client: RegistryClient, ref: Reference) -> tuple[int, bytes]:
        size = await client.head_blob(ref, DIGEST)
        tagged = ref.with_tag("faulty")
        await client.put_manifest(tagged, raw, "application/vnd.oci.image.manifest.v1+json")
        return size, (await client.get_manifest(tagged)).raw

    assert run(proxy, call) == (len(BLOB), raw)
