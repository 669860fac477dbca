"""Blob fetchers: where a layer's compressed bytes come from."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from stargz.config import BlobConfig
from stargz.errors import RangeError, StargzError, TransportError
from stargz.opmetrics import REMOTE_REGISTRY_GET, timed
from stargz.registry.reference import Reference
from stargz.registry.retry import RetryPolicy
from stargz.remote.regions import Range
from stargz.trace import span


@runtime_checkable
class BlobFetcher(Protocol):
    """Exact byte ranges of one blob of known size."""

    @property
    def size(self) -> int: ...

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        """One bytes object per range, exactly ``end - start`` long, in order."""
        ...


class RegistryReader(Protocol):
    """The part of ``stargz.registry.RegistryClient`` a fetcher uses."""

    async def read_blob_ranges(
        self, ref: Reference, digest: str, ranges: Sequence[tuple[int, int]]
    ) -> list[bytes]: ...


class RegistryTailReader(RegistryReader, Protocol):
    """A RegistryReader that also reads a blob's end without knowing its size."""

    async def read_blob_tail(
        self, ref: Reference, digest: str, length: int
    ) -> tuple[int, bytes]: ...


def check_answer(ranges: list[Range], data: list[bytes]) -> list[bytes]:
    """Refuse an answer that does not hold exactly the bytes asked for."""
    if len(data) != len(ranges):
        raise RangeError(f"asked for {len(ranges)} ranges, got {len(data)}")
    for (start, end), piece in zip(ranges, data, strict=True):
        if len(piece) != end - start:
            raise RangeError(f"range [{start}, {end}) came back with {len(piece)} bytes")
    return data


class RegistryBlobFetcher:
    """A blob in a registry, read with (multi-)range requests by the registry client."""

    def __init__(self, client: RegistryReader, repo_ref: Reference, digest: str, size: int) -> None:
        self._client = client
        self._ref = repo_ref
        self._digest = digest
        self._size = size

    @classmethod
    async def open_with_tail(cls, client: RegistryTailReader, repo_ref: Reference, digest: str,
                             length: int) -> tuple[RegistryBlobFetcher, bytes]:
        """A fetcher for a blob of unknown size, and the blob's last ``length`` bytes: one
        suffix-range request gives both (no HEAD first)."""
        with span("range_request", blob=digest, ranges=1, start=-length, bytes=length), \
                timed(REMOTE_REGISTRY_GET, digest):
            size, tail = await client.read_blob_tail(repo_ref, digest, length)
        return cls(client, repo_ref, digest, size), tail

    @property
    def size(self) -> int:
        return self._size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        with span("range_request", blob=self._digest, ranges=len(ranges),
                  start=ranges[0][0] if ranges else None,
                  bytes=sum(end - start for start, end in ranges)), \
                timed(REMOTE_REGISTRY_GET, self._digest):
            data = await self._client.read_blob_ranges(self._ref, self._digest, ranges)
        return check_answer(ranges, data)


class FileBlobFetcher:
    """A blob in a local file (tests, and mounting local blobs); pread in a thread."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise TransportError(f"cannot open blob {self._path}: {err.strerror}") from None
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        return await asyncio.to_thread(self._read_all, ranges)

    def _read_all(self, ranges: list[Range]) -> list[bytes]:
        out = []
        for start, end in ranges:
            if start < 0 or end > self._size or end < start:
                raise RangeError(f"range [{start}, {end}) is outside the {self._size}-byte blob")
            try:
                piece = os.pread(self._fd, end - start, start)
            except OSError as err:
                raise TransportError(f"reading blob {self._path}: {err.strerror}") from None
            out.append(piece)
        return check_answer(ranges, out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CountingFetcher:
    """Wraps a fetcher and records every request and its ranges (stats and tests)."""

    def __init__(self, inner: BlobFetcher) -> None:
        self._inner = inner
        self.requests: list[list[Range]] = []

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def bytes_fetched(self) -> int:
        return sum(end - start for request in self.requests for start, end in request)

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        self.requests.append(list(ranges))
        return await self._inner.fetch(ranges)


async def fetch_checked(fetcher: BlobFetcher, ranges: list[Range], timeout: float) -> list[bytes]:
    """Fetch with a deadline; every failure comes out as a StargzError (TransportError for
    timeouts and unexpected exceptions), never a hang."""
    try:
        data = await asyncio.wait_for(fetcher.fetch(ranges), timeout)
    except TimeoutError:
        raise TransportError(
            f"fetch of {len(ranges)} range(s) timed out after {timeout} s"
        ) from None
    except StargzError:
        raise
    except OSError as err:
        raise TransportError(f"fetch failed: {err}") from None
    return check_answer(ranges, data)


def retry_policy(blob: BlobConfig) -> RetryPolicy:
    """The registry client's retry policy for ``[blob]`` settings, so every front end builds
    its client the same way: ``RegistryClient(..., retry=retry_policy(config.blob))``."""
    return RetryPolicy(max_retries=blob.max_retries, initial_backoff=blob.min_wait_msec / 1000,
                       max_backoff=blob.max_wait_msec / 1000)
