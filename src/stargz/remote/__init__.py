"""A blob read through ranges: region math, fetchers and in-flight sharing."""

from stargz.remote.fetcher import (
    BlobFetcher,
    CountingFetcher,
    FileBlobFetcher,
    RegistryBlobFetcher,
    fetch_checked,
    retry_policy,
)
from stargz.remote.inflight import InFlight
from stargz.remote.regions import Range, SpanSet, batches, merge_ranges, slice_from

__all__ = [
    "BlobFetcher",
    "CountingFetcher",
    "FileBlobFetcher",
    "InFlight",
    "Range",
    "RegistryBlobFetcher",
    "SpanSet",
    "batches",
    "fetch_checked",
    "merge_ranges",
    "retry_policy",
    "slice_from",
]
