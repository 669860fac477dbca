"""Opening a remote blob: footer and TOC in one tail read of TAIL_READ bytes (two when the TOC
is bigger: the rest of it, exactly),
or, for a layer whose TOC is kept outside it (external TOC), the footer and that TOC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from stargz import opmetrics
from stargz.config import LimitsConfig
from stargz.errors import ExternalTOCError, FormatError, InvalidArgumentError
from stargz.estargz.footer import parse_footer
from stargz.estargz.reader import (
    TAIL_READ,
    UnverifiedBlob,
    VerifiedBlob,
    open_blob,
    open_blob_external,
)
from stargz.layer.stats import LayerStats
from stargz.remote.fetcher import BlobFetcher, fetch_checked

ZSTD_SKIPPABLE_HEADER = 8  # zstd:chunked keeps the TOC in a skippable frame; its header is checked
# Where an external-TOC layer's TOC comes from (layer.externaltoc.TOCImage.toc_of, bound).
ExternalTOC = Callable[[], Awaitable[bytes]]


class TailSource:
    """The fetched end of a blob as a RangeSource; bytes before ``base`` were never fetched,
    and asking for them is a FormatError (file data goes through the layer, not here)."""

    def __init__(self, size: int, base: int, data: bytes) -> None:
        self._size = size
        self._base = base
        self._data = data

    @property
    def size(self) -> int:
        return self._size

    @property
    def base(self) -> int:
        return self._base

    @property
    def data(self) -> bytes:
        return self._data

    def chunk_bytes(self) -> bytes:
        """The fetched bytes before the TOC (chunk data the tail read brought along, from
        ``base``); empty when the footer can not tell where the TOC starts."""
        try:
            footer = parse_footer(self._data)
            toc_start, _ = footer.toc_range(self._size)
        except FormatError:
            return b""
        if footer.kind == "zstd-chunked":
            toc_start -= ZSTD_SKIPPABLE_HEADER
        return self._data[:max(0, toc_start - self._base)]

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < self._base or offset + length > self._size or length < 0:
            raise FormatError(
                f"bytes [{offset}, {offset + length}) of the blob were not fetched at open"
            )
        start = offset - self._base
        return self._data[start : start + length]


async def fetch_tail(
    fetcher: BlobFetcher, timeout: float, stats: LayerStats, digest: str = "",
    last: bytes | None = None,
) -> TailSource:
    """Fetch the footer and TOC: the last TAIL_READ bytes (or ``last``, the blob's end fetched
    already), then whatever of the TOC is before them. ``digest`` labels the timings
    (stargz_footer_get, stargz_toc_get)."""
    with opmetrics.timed(opmetrics.STARGZ_TOC_GET, digest):
        return await _fetch_tail(fetcher, timeout, stats, digest, last)


async def _fetch_tail(
    fetcher: BlobFetcher, timeout: float, stats: LayerStats, digest: str, last: bytes | None
) -> TailSource:
    size = fetcher.size
    if last is not None:
        tail, tail_start = last, size - len(last)
    else:
        tail_start = max(0, size - TAIL_READ)
        with opmetrics.timed(opmetrics.STARGZ_FOOTER_GET, digest):
            (tail,) = await fetch_checked(fetcher, [(tail_start, size)], timeout)
    stats.count_fetch("metadata", size - tail_start)
    try:
        footer = parse_footer(tail)
    except ExternalTOCError:  # the TOC is elsewhere: open_unverified fetches it
        stats.held.add(tail_start, size)
        return TailSource(size, tail_start, tail)
    toc_start, _ = footer.toc_range(size)
    if footer.kind == "zstd-chunked":
        toc_start -= ZSTD_SKIPPABLE_HEADER
    toc_start = max(0, toc_start)
    if toc_start < tail_start:
        (head,) = await fetch_checked(fetcher, [(toc_start, tail_start)], timeout)
        stats.count_fetch("metadata", tail_start - toc_start)
        tail, tail_start = head + tail, toc_start
    stats.held.add(tail_start, size)
    return TailSource(size, tail_start, tail)


async def open_verified(
    fetcher: BlobFetcher,
    toc_digest: str | None,
    timeout: float,
    stats: LayerStats,
    skip_verification_reason: str | None = None,
    digest: str = "",
    external_toc: ExternalTOC | None = None,
) -> VerifiedBlob:
    """Open the blob and check its TOC against the layer's TOC digest (TOCDigestMismatch).

    Without a TOC digest the caller must say why verification is skipped; it is logged."""
    if toc_digest is None and not skip_verification_reason:
        raise InvalidArgumentError("a layer needs its TOC digest, or an explicit reason to skip")
    unverified = await open_unverified(fetcher, timeout, stats, digest, external_toc)
    if toc_digest is None:
        assert skip_verification_reason is not None
        return unverified.skip_verification(skip_verification_reason)
    return unverified.verify(toc_digest)


async def open_unverified(
    fetcher: BlobFetcher,
    timeout: float,
    stats: LayerStats,
    digest: str = "",
    external_toc: ExternalTOC | None = None,
) -> UnverifiedBlob:
    """Footer and TOC, not yet verified (``fetch_tail``, then ``open_tail``)."""
    source = await fetch_tail(fetcher, timeout, stats, digest)
    return await open_tail(source, stats, digest, external_toc)


async def open_tail(
    source: TailSource,
    stats: LayerStats,
    digest: str = "",
    external_toc: ExternalTOC | None = None,
    limits: LimitsConfig | None = None,
) -> UnverifiedBlob:
    """The TOC of a fetched tail, or, when the footer says the TOC is kept outside the blob,
    the one ``external_toc`` gives (ExternalTOCError when there is nobody to ask)."""
    try:
        with opmetrics.timed(opmetrics.DESERIALIZE_TOC_JSON, digest):
            return await anyio.to_thread.run_sync(open_blob, source, limits)
    except ExternalTOCError:
        if external_toc is None:
            raise
    toc_blob = await external_toc()
    stats.count_fetch("metadata", len(toc_blob))
    with opmetrics.timed(opmetrics.DESERIALIZE_TOC_JSON, digest):
        return await anyio.to_thread.run_sync(open_blob_external, source, toc_blob, limits)
