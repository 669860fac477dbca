"""An image's layers, ready to serve: eStargz layers lazily, other layers downloaded in full.

A layer whose descriptor carries a TOC digest annotation is opened from the registry through
the process's :class:`~stargz.layer.service.LayerService` (footer and TOC, verified; prefetch
waited for up to ``prefetch_timeout_sec``). Any
other layer is downloaded (digest-checked while streaming), rebuilt into a local eStargz blob and
served from that file by the same FUSE code, so whiteouts and opaque directories look the same
to overlayfs whichever way a layer came.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import InvalidArgumentError, StargzError
from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.writer import TOC_DIGEST_ANNOTATION, BuildOptions, build
from stargz.fs.view import BlobLayerView, LayerStatsView, LayerView
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.manifest import Descriptor, Manifest
from stargz.registry.reference import Reference

log = logging.getLogger(__name__)

LOCAL_LEVEL = 1  # a local rebuild is read from disk: fast compression beats small files


class LoggedReads:
    """A layer view whose failed reads are logged with the layer, the file and the offset
    (the kernel only hears EIO; the log says which bytes of what could not be served)."""

    def __init__(self, view: LayerView) -> None:
        self.view = view

    @property
    def digest(self) -> str:
        return self.view.digest

    @property
    def blob(self) -> VerifiedBlob:
        return self.view.blob

    def stats(self) -> LayerStatsView:
        return self.view.stats()

    def note_use(self) -> None:
        note = getattr(self.view, "note_use", None)  # lazy layers pause background fetch
        if note is not None:
            note()

    async def read(self, path: str, offset: int, size: int) -> bytes:
        try:
            return await self.view.read(path, offset, size)
        except StargzError as err:
            log.error("layer %s: read of %d bytes of %r at offset %d failed: %s",
                      self.digest, size, path, offset, err)
            raise


@dataclass
class OpenLayer:
    """One layer of the image as served: its directory name in the FUSE mount and its view."""

    descriptor: Descriptor
    view: LayerView
    lazy: bool

    @property
    def served(self) -> LoggedReads:
        return LoggedReads(self.view)

    @property
    def dirname(self) -> str:
        return self.descriptor.digest.replace(":", "-")  # overlayfs splits lowerdir on ':'


async def open_image_layers(service: LayerService, registry: RegistryClient, ref: Reference,
                            manifest: Manifest, blobs_dir: Path) -> list[OpenLayer]:
    """Every layer of ``manifest``, bottom first, all at once; a failure closes what was
    opened. Lazy layers come from ``service``, the others are downloaded with ``registry``."""
    layers = manifest.layers()
    if not layers:
        raise InvalidArgumentError(f"{ref}: the image has no layers")
    tasks = [asyncio.create_task(_open_one(service, registry, ref, d, blobs_dir))
             for d in layers]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in done if isinstance(r, BaseException)]
    if errors:
        await close_layers(service, [r for r in done if isinstance(r, OpenLayer)])
        raise errors[0]
    return [r for r in done if isinstance(r, OpenLayer)]


async def _open_one(service: LayerService, registry: RegistryClient, image: Reference,
                    descriptor: Descriptor, blobs_dir: Path) -> OpenLayer:
    repo = image.repo_only()
    toc_digest = descriptor.annotations.get(TOC_DIGEST_ANNOTATION)
    if toc_digest:  # the image's tag finds an external TOC's TOC image
        layer = await service.acquire(image, descriptor.digest, toc_digest,
                                      descriptor.size or None)
        return OpenLayer(descriptor, layer, lazy=True)
    view = await _download_in_full(registry, repo, descriptor, blobs_dir)
    return OpenLayer(descriptor, view, lazy=False)


async def _download_in_full(registry: RegistryClient, repo: Reference, descriptor: Descriptor,
                            blobs_dir: Path) -> BlobLayerView:
    digest = descriptor.digest
    print(f"stargz: notice: layer {digest} is not eStargz: downloading it in full "
          f"({descriptor.size} bytes)", file=sys.stderr, flush=True)
    hex_digest = digest.split(":", 1)[-1]
    download = blobs_dir / f"{hex_digest}.download"
    rebuilt = blobs_dir / f"{hex_digest}.estargz"
    with open(download, "wb") as out:
        # stream_blob checks the digest at the end: nothing is used before it finished
        async for piece in registry.stream_blob(repo, digest):
            await asyncio.to_thread(out.write, piece)
    try:
        result = await asyncio.to_thread(_rebuild, download, rebuilt)
    finally:
        os.unlink(download)
    blob = await asyncio.to_thread(lambda: open_blob(FileSource(rebuilt)).verify(result))
    return BlobLayerView(digest, blob)


def _rebuild(tar: Path, out: Path) -> str:
    """Rebuild the downloaded layer (a tar, compressed or not) as a local eStargz blob."""
    with open(tar, "rb") as src, open(out, "wb") as dst:
        return build(src, dst, BuildOptions(level=LOCAL_LEVEL)).toc_digest


async def close_layers(service: LayerService, layers: list[OpenLayer]) -> None:
    for layer in layers:
        if layer.lazy:
            await service.release(layer.descriptor.digest)
        elif isinstance(layer.view, BlobLayerView):
            layer.view.close()
