"""The OCI distribution client: manifests, blobs (whole, streamed, ranges), uploads.

Every call tries the registry's endpoints in order (mirrors, then the origin), retries each with
backoff, and either returns exactly the bytes asked for or raises one typed error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

import stargz.registry.upload as upload
from stargz.errors import (
    ConfigError,
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    StargzError,
    TransportError,
    VerificationError,
)
from stargz.registry.auth import repository_scope
from stargz.registry.bodies import (
    content_length,
    multi_body,
    refuses_multirange,
    single_body,
    stream_total,
    tail_body,
)
from stargz.registry.credentials import CredentialStore
from stargz.registry.hosts import Endpoint, HostsConfig
from stargz.registry.layoutclient import LayoutClient
from stargz.registry.manifest import (
    ACCEPT,
    Manifest,
    Platform,
    digest_of,
    make_manifest,
    new_hasher,
    select_platform,
)
from stargz.registry.ranges import (
    assemble,
    check_ranges,
    merge_ranges,
    range_header,
)
from stargz.registry.reference import Reference, validate_digest
from stargz.registry.retry import (
    RetryableStatus,
    RetryPolicy,
    ShortBody,
    describe,
    is_tls_failure,
)
from stargz.registry.session import Session, registry_error

log = logging.getLogger("stargz.registry")
T = TypeVar("T")
MAX_RANGES_PER_REQUEST = 64  # keeps the Range header well under servers' header limits
_REFUSED_MULTIRANGE = frozenset({200, 400, 416})
_EXPIRED_REDIRECT = frozenset({400, 401, 403, 404})


class RegistryClient:
    """Async OCI distribution client. Use as ``async with RegistryClient(...) as client``."""

    def __init__(self, hosts: HostsConfig | None = None,
                 credentials: CredentialStore | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 retry: RetryPolicy | None = None, parallel_ranges: int = 8) -> None:
        self.hosts = hosts or HostsConfig()
        self._session = Session(credentials or CredentialStore(), retry or RetryPolicy(),
                                self.hosts, transport)
        self._redirects: dict[tuple[str, str, str], str] = {}
        self._no_multirange: set[str] = set()
        self._range_slots = asyncio.Semaphore(parallel_ranges)
        self._layouts = LayoutClient()  # oci:DIR references are served from disk

    def __repr__(self) -> str:
        return f"RegistryClient(hosts={self.hosts!r})"

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.aclose()

    @property
    def retry(self) -> RetryPolicy:
        return self._session.retry

    # -- endpoints ---------------------------------------------------------------------------

    async def _on_endpoints(self, ref: Reference, capability: str,
                            operation: Callable[[Endpoint], Awaitable[T]]) -> T:
        if ref.is_layout:
            raise InvalidArgumentError(f"{ref} is an OCI layout, not a registry reference")
        endpoints = self.hosts.endpoints(ref.registry, capability)
        if not endpoints:
            raise ConfigError(f"no endpoint of {ref.registry} has the {capability} capability")
        failure: StargzError | None = None
        for endpoint in endpoints:
            try:
                return await operation(endpoint)
            except InvalidArgumentError:
                raise
            except StargzError as err:
                if not endpoint.is_mirror:
                    raise
                log.warning("mirror %s failed (%s); trying the next endpoint", endpoint.host, err)
                failure = err
        assert failure is not None
        raise failure

    def _url(self, endpoint: Endpoint, ref: Reference, kind: str, name: str) -> str:
        return f"{endpoint.base_url}/{ref.repository}/{kind}/{name}"

    @staticmethod
    def _pull(ref: Reference) -> tuple[str, ...]:
        return (repository_scope(ref.repository, "pull"),)

    # -- manifests ---------------------------------------------------------------------------

    async def fetch_manifest(self, ref: Reference) -> Manifest:
        """The manifest or index ``ref`` names, as served (digest-checked when pinned)."""
        if ref.is_layout:
            return await self._layouts.fetch_manifest(ref)
        capability = "pull" if ref.digest else "resolve"

        async def on(endpoint: Endpoint) -> Manifest:
            url = self._url(endpoint, ref, "manifests", ref.object)

            async def once() -> httpx.Response:
                response = await self._session.send(endpoint, "GET", url, scopes=self._pull(ref),
                                                     headers={"Accept": ACCEPT})
                if response.status_code != 200:
                    raise registry_error(response, f"manifest {ref}")
                return response

            response = await self.retry.run(f"GET manifest {ref}", once)
            return make_manifest(response.content, response.headers.get("content-type"),
                                 ref.digest)

        return await self._on_endpoints(ref, capability, on)

    async def get_manifest(self, ref: Reference, platform: Platform | None = None) -> Manifest:
        """The image manifest for ``ref``: an index is resolved to ``platform`` (default: host)."""
        if ref.is_layout:
            return await self._layouts.get_manifest(ref, platform)
        manifest = await self.fetch_manifest(ref)
        for _ in range(2):  # an index may point at a nested index, once
            if not manifest.is_index:
                return manifest
            entry = select_platform(manifest, platform or Platform.host())
            manifest = await self.fetch_manifest(ref.with_digest(entry.digest))
        if manifest.is_index:
            raise RegistryError(f"{ref}: indexes nested too deeply")
        return manifest

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """Store a manifest under ``ref``'s tag (or digest); returns its digest."""
        if ref.is_layout:
            return await self._layouts.put_manifest(ref, raw, media_type)
        digest = digest_of(raw, ref.digest or "sha256:")
        if ref.digest and digest != ref.digest:
            raise VerificationError(f"manifest digest is {digest}, the reference says {ref.digest}")

        async def on(endpoint: Endpoint) -> str:
            url = self._url(endpoint, ref, "manifests", ref.object)
            return await upload.put_manifest(self._session, endpoint, url, ref.repository,
                                             raw, media_type, digest)

        return await self._on_endpoints(ref, "push", on)

    # -- whole blobs -------------------------------------------------------------------------

    async def head_blob(self, ref: Reference, digest: str) -> int:
        """The blob's size; NotFoundError when the repository does not have it."""
        if ref.is_layout:
            return await self._layouts.head_blob(ref, digest)
        validate_digest(digest)

        async def on(endpoint: Endpoint) -> int:
            async def once() -> int:
                response = await self._session.send(
                    endpoint, "HEAD", self._url(endpoint, ref, "blobs", digest),
                    scopes=self._pull(ref))
                if response.status_code != 200:
                    raise registry_error(response, f"blob {digest} in {ref.name}")
                return content_length(response)

            return await self.retry.run(f"HEAD blob {digest}", once)

        return await self._on_endpoints(ref, "pull", on)

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        try:
            await self.head_blob(ref, digest)
        except NotFoundError:
            return False
        return True

    async def get_blob(self, ref: Reference, digest: str) -> bytes:
        """A whole blob in memory, digest-verified (configs and other small blobs)."""
        return b"".join([chunk async for chunk in self.stream_blob(ref, digest)])

    async def stream_blob(self, ref: Reference, digest: str) -> AsyncIterator[bytes]:
        """Yield the blob's bytes; a broken connection resumes with a Range request. Raises
        VerificationError at the end when the bytes do not match ``digest``: a consumer must
        not trust what it stored until the iterator finished without error."""
        validate_digest(digest)
        if ref.is_layout:
            async for piece in self._layouts.stream_blob(ref, digest):
                yield piece
            return
        hasher = new_hasher(digest)
        received, failures, total = 0, 0, None
        while total is None or received < total:
            try:
                response = await self._open_blob(ref, digest, received)
                try:
                    total = stream_total(response, received)
                    async for chunk in response.aiter_bytes():
                        hasher.update(chunk)
                        received += len(chunk)
                        yield chunk
                finally:
                    await response.aclose()
                if received != total:
                    raise ShortBody(f"blob {digest}: body ended at {received} of {total} bytes")
            except (httpx.TransportError, RetryableStatus, ShortBody) as err:
                failures += 1
                if failures > self.retry.max_retries or is_tls_failure(err):
                    raise TransportError(f"GET blob {digest}: {describe(err)} "
                                         f"(gave up after {failures} attempts)") from None
                await asyncio.sleep(self.retry.backoff(failures - 1, None))
        actual = f"{hasher.name}:{hasher.hexdigest()}"
        if actual != digest:
            raise VerificationError(f"blob {digest} from {ref.name} has digest {actual}")

    async def _open_blob(self, ref: Reference, digest: str, offset: int) -> httpx.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}

        async def on(endpoint: Endpoint) -> httpx.Response:
            return await self.retry.run(
                f"GET blob {digest}",
                lambda: self._blob_request(endpoint, ref, digest, headers, stream=True))

        response = await self._on_endpoints(ref, "pull", on)
        if response.status_code not in (200, 206):
            await response.aread()
            await response.aclose()
            raise registry_error(response, f"blob {digest} in {ref.name}")
        return response

    async def _blob_request(self, endpoint: Endpoint, ref: Reference, digest: str,
                            headers: dict[str, str], stream: bool = False) -> httpx.Response:
        """GET a blob, straight from a storage URL the registry redirected to before, when
        there is one; an expired one (403 and friends) sends us back to the registry."""
        key = (endpoint.host, ref.repository, digest)
        cached = self._redirects.get(key)
        if cached is not None:
            response = await self._session.send(endpoint, "GET", cached, scopes=(),
                                                 headers=headers, stream=stream, authorize=False)
            if response.status_code not in _EXPIRED_REDIRECT:
                return response
            await response.aclose()
            self._redirects.pop(key, None)
            log.debug("redirect for %s expired (HTTP %d)", digest, response.status_code)
        url = self._url(endpoint, ref, "blobs", digest)
        response = await self._session.send(endpoint, "GET", url, scopes=self._pull(ref),
                                             headers=headers, stream=stream)
        if str(response.url) != url and response.status_code in (200, 206):
            self._redirects[key] = str(response.url)
        if response.status_code not in (200, 206) and not stream:
            raise registry_error(response, f"blob {digest} in {ref.name}")
        return response

    # -- ranges ------------------------------------------------------------------------------

    async def read_blob_range(self, ref: Reference, digest: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the blob: exactly that many, or an error."""
        check_ranges([(start, end)])
        if ref.is_layout:
            return (await self._layouts.read_blob_ranges(ref, digest, [(start, end)]))[0]
        return await self._read_single(ref, digest, start, end)

    async def read_blob_ranges(self, ref: Reference, digest: str,
                               ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several ranges in as few requests as the registry allows (multipart/byteranges),
        falling back to one request per range when it refuses multi-range answers."""
        check_ranges(ranges)
        validate_digest(digest)
        if ref.is_layout:
            return await self._layouts.read_blob_ranges(ref, digest, ranges)
        merged = merge_ranges(ranges)
        parts: list[tuple[int, int, bytes]] = []
        for first in range(0, len(merged), MAX_RANGES_PER_REQUEST):
            batch = merged[first:first + MAX_RANGES_PER_REQUEST]
            got = await self._read_multi(ref, digest, batch) if len(batch) > 1 else None
            if got is None:
                got = list(await asyncio.gather(
                    *(self._read_single(ref, digest, s, e) for s, e in batch)))
            parts.extend((s, e, data) for (s, e), data in zip(batch, got, strict=True))
        return assemble(ranges, parts)

    async def read_blob_tail(self, ref: Reference, digest: str, length: int) -> tuple[int, bytes]:
        """The blob's size and its last ``length`` bytes (all of it when shorter): one
        suffix-range request (``Range: bytes=-N``, whose Content-Range gives the size), or a
        HEAD and a range request when the registry ignores suffix ranges."""
        if length <= 0:
            raise InvalidArgumentError(f"a blob's tail must be at least 1 byte, not {length}")
        validate_digest(digest)
        if not ref.is_layout:
            got = await self._read_suffix(ref, digest, length)
            if got is not None:
                return got
        size = await self.head_blob(ref, digest)
        start = max(0, size - length)
        return size, await self.read_blob_range(ref, digest, start, size) if size else b""

    async def _read_suffix(self, ref: Reference, digest: str,
                           length: int) -> tuple[int, bytes] | None:
        async def on(endpoint: Endpoint) -> tuple[int, bytes] | None:
            async def once() -> tuple[int, bytes] | None:
                response = await self._blob_request(
                    endpoint, ref, digest, {"Range": f"bytes=-{length}"}, stream=True)
                return await tail_body(response, digest, length)

            return await self.retry.run(f"GET blob {digest} last {length} bytes", once)

        async with self._range_slots:
            return await self._on_endpoints(ref, "pull", on)

    async def _read_single(self, ref: Reference, digest: str, start: int, end: int) -> bytes:
        async def on(endpoint: Endpoint) -> bytes:
            async def once() -> bytes:
                response = await self._blob_request(
                    endpoint, ref, digest, {"Range": range_header([(start, end)])}, stream=True)
                return await single_body(response, digest, start, end)

            return await self.retry.run(f"GET blob {digest} bytes {start}-{end - 1}", once)

        async with self._range_slots:
            return await self._on_endpoints(ref, "pull", on)

    async def _read_multi(self, ref: Reference, digest: str,
                          ranges: list[tuple[int, int]]) -> list[bytes] | None:
        """None when the registry will not do multi-range (the caller falls back)."""
        async def on(endpoint: Endpoint) -> list[bytes] | None:
            if endpoint.host in self._no_multirange:
                return None

            async def once() -> list[bytes] | None:
                response = await self._blob_request(
                    endpoint, ref, digest, {"Range": range_header(ranges)}, stream=True)
                if response.status_code in _REFUSED_MULTIRANGE:
                    await response.aclose()
                    if refuses_multirange(response, ranges):
                        self._no_multirange.add(endpoint.host)
                        log.info("%s refused a multi-range read; using single ranges",
                                 endpoint.host)
                    return None
                return await multi_body(response, digest, ranges)

            return await self.retry.run(f"GET blob {digest} ({len(ranges)} ranges)", once)

        return await self._on_endpoints(ref, "pull", on)

    # -- uploads -----------------------------------------------------------------------------

    async def push_blob(self, ref: Reference, data: bytes | Path, digest: str | None = None,
                        chunk_size: int | None = None) -> str:
        """Upload a blob (bytes or a file) unless the repository has it; returns its digest.
        ``chunk_size`` set: a chunked upload (PATCH per chunk); otherwise POST + one PUT."""
        if ref.is_layout:
            return await self._layouts.push_blob(ref, data, digest)
        blob = await upload.BlobData.of(data, digest)

        async def on(endpoint: Endpoint) -> str:
            if await self._exists_at(endpoint, ref, blob.digest):
                return blob.digest
            return await upload.push_blob(self._session, endpoint, ref.repository, blob,
                                          chunk_size)

        return await self._on_endpoints(ref, "push", on)

    async def _exists_at(self, endpoint: Endpoint, ref: Reference, digest: str) -> bool:
        async def once() -> bool:
            response = await self._session.send(
                endpoint, "HEAD", self._url(endpoint, ref, "blobs", digest),
                scopes=(repository_scope(ref.repository, "pull,push"),))
            if response.status_code in (200, 404):
                return response.status_code == 200
            raise registry_error(response, f"blob {digest} in {ref.name}")

        return await self.retry.run(f"HEAD blob {digest}", once)

    async def mount_blob(self, ref: Reference, digest: str, from_repository: str) -> bool:
        """Cross-repository mount; False when the registry could not mount (nothing is left
        behind: the upload it opened instead is cancelled)."""
        validate_digest(digest)
        if ref.is_layout:
            return await self._layouts.mount_blob(ref, digest)

        async def on(endpoint: Endpoint) -> bool:
            return await upload.mount_blob(self._session, endpoint, ref.repository, digest,
                                           from_repository)

        return await self._on_endpoints(ref, "push", on)
