"""Mounting a layer from where its blob lives: a registry, or a local file."""

from __future__ import annotations

from pathlib import Path

from stargz.cache import ChunkCache
from stargz.config import Config
from stargz.layer.layer import Layer, mount
from stargz.layer.scheduler import BackgroundScheduler
from stargz.opmetrics import STARGZ_HEADER_GET, timed
from stargz.registry.client import RegistryClient
from stargz.registry.reference import Reference
from stargz.remote.fetcher import FileBlobFetcher, RegistryBlobFetcher


async def mount_from_registry(
    client: RegistryClient,
    repo_ref: Reference,
    digest: str,
    toc_digest: str | None,
    cache: ChunkCache,
    config: Config,
    size: int | None = None,
    skip_verification_reason: str | None = None,
    scheduler: BackgroundScheduler | None = None,
) -> Layer:
    """Mount layer ``digest`` of ``repo_ref`` lazily (size from the manifest, else a HEAD)."""
    if size is None:
        with timed(STARGZ_HEADER_GET, digest):
            size = await client.head_blob(repo_ref, digest)
    fetcher = RegistryBlobFetcher(client, repo_ref, digest, size)
    return await mount(fetcher, digest, toc_digest, cache, config, skip_verification_reason,
                       scheduler)


async def mount_from_file(
    path: str | Path,
    digest: str,
    toc_digest: str | None,
    cache: ChunkCache,
    config: Config,
    skip_verification_reason: str | None = None,
    scheduler: BackgroundScheduler | None = None,
) -> Layer:
    """Mount a blob kept in a local file, read through the same verified path."""
    fetcher = FileBlobFetcher(path)
    return await mount(fetcher, digest, toc_digest, cache, config, skip_verification_reason,
                       scheduler)
