"""The store's layers: podman's use counts over the process's LayerService.

An entry is one layer of one image (image reference as podman gave it, layer digest). It holds
one use of the LayerService's layer while podman holds it, counted as the reference store counts:
podman creates ``<layer>/use`` when it takes the layer (pull, container layer, diff) and removes
the layer directory when it lets go. When the count drops to zero the entry goes: the layer's
use is given back (the service keeps its verified TOC a while for a quick re-use) and its blob
copy is deleted. An entry nobody counted (looked up, never used) goes after ``idle_sec`` unless
the kernel still holds its files (the caller tells: see StoreCore).

The counts are saved on every change (``state.StateFile``): a restarted store restores them
with each layer's description, so podman's next lookups need no manifest, and the layer service
resolves the layers from the TOCs it keeps on disk.

``blob`` (the compressed layer, which containers/storage reads to commit or push an image) is
served from a local copy downloaded once and checked against the layer digest before any byte
of it is served.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from stargz.errors import NotFoundError, StargzError
from stargz.layer.layer import Layer
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.reference import Reference
from stargz.store.images import ImagePool, LayerInfo
from stargz.store.state import HeldLayer, StateFile

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (image reference as podman gave it, layer digest)


@dataclass(eq=False)
class StoreLayer:
    ref_name: str
    ref: Reference
    info: LayerInfo
    uses: int = 0
    layer: Layer | None = None  # one use of the service's layer, while held
    blob_fd: int | None = None  # the verified local copy of the blob, once asked for
    touched: float = field(default_factory=time.monotonic)
    dropped: bool = False
    lock: anyio.Lock = field(default_factory=anyio.Lock)  # acquiring / dropping the layer
    blob_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def key(self) -> Key:
        return (self.ref_name, self.info.digest)


class StoreLayers:
    """Entries by (image, layer digest); see the module docstring."""

    def __init__(self, service: LayerService, registry: RegistryClient, images: ImagePool,
                 root: Path, idle_sec: float) -> None:
        self.service = service
        self.registry = registry
        self.images = images
        self.idle_sec = idle_sec
        self._state = StateFile(root)
        self._blobs = root / "blobs"
        self._entries: dict[Key, StoreLayer] = {}
        self._refused: set[Key] = set()  # layers said to be pulled the ordinary way

    # -- entries ---------------------------------------------------------------------------

    async def entry(self, ref_name: str, ref: Reference, digest: str) -> StoreLayer:
        """The entry of layer ``digest`` of image ``ref``; NotFoundError when the image has no
        such layer or it can not be served lazily (podman then pulls it itself)."""
        key = (ref_name, digest)
        found = self._entries.get(key)
        if found is None:
            info = await self.images.describe(ref_name, ref, digest)
            if not info.toc_digest:
                if key not in self._refused:
                    self._refused.add(key)
                    log.info("layer %s of %s is not eStargz (no TOC digest): podman pulls it",
                             digest, ref_name)
                raise NotFoundError(f"layer {digest} of {ref_name} can not be served lazily")
            found = self._entries.setdefault(key, StoreLayer(ref_name, ref, info))
        found.touched = time.monotonic()
        return found

    def find(self, key: Key) -> StoreLayer | None:
        return self._entries.get(key)

    def entries(self) -> list[StoreLayer]:
        return list(self._entries.values())

    async def layer(self, entry: StoreLayer) -> Layer:
        """The entry's lazily pulled layer: resolved, verified, its fetches started."""
        async with entry.lock:
            if entry.dropped:
                raise NotFoundError(f"layer {entry.info.digest} of {entry.ref_name} was released")
            if entry.layer is None:
                entry.layer = await self.service.acquire(
                    entry.ref, entry.info.digest, entry.info.toc_digest, entry.info.size,
                    wait_prefetch=False)
                log.info("layer %s of %s served lazily", entry.info.digest, entry.ref_name)
            entry.touched = time.monotonic()
            return entry.layer

    # -- podman's uses -----------------------------------------------------------------------

    async def use(self, entry: StoreLayer) -> int:
        entry.uses += 1
        entry.touched = time.monotonic()
        log.info("layer %s of %s in use (%d)", entry.info.digest, entry.ref_name, entry.uses)
        await self._save()
        return entry.uses

    async def release(self, key: Key) -> int:
        """One use fewer; at none the entry goes. Returns the uses left."""
        entry = self._entries.get(key)
        if entry is None or entry.uses == 0:
            log.debug("release of layer %s of %s, which podman does not hold", key[1], key[0])
            return 0
        entry.uses -= 1
        log.info("layer %s of %s released (%d left)", key[1], key[0], entry.uses)
        if entry.uses == 0:
            await self._drop(entry)
        await self._save()
        return entry.uses

    async def expire(self, keep: Callable[[Key], bool]) -> list[Key]:
        """Drop the entries nobody counted and nobody looked up for ``idle_sec``, but those
        ``keep`` says are still in use (the kernel holds their files)."""
        now = time.monotonic()
        idle = [e for e in self._entries.values()
                if e.uses == 0 and now - e.touched >= self.idle_sec and not keep(e.key)]
        for entry in idle:
            await self._drop(entry)
        return [e.key for e in idle]

    async def _drop(self, entry: StoreLayer) -> None:
        async with entry.lock:
            entry.dropped = True
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            layer, entry.layer = entry.layer, None
            if layer is not None:
                await self.service.release(entry.info.digest)
            async with entry.blob_lock:
                self._close_blob(entry)

    async def close(self) -> None:
        """Close the blob copies (the service closes the layers); the use counts stay saved."""
        for entry in list(self._entries.values()):
            async with entry.blob_lock:
                self._close_blob(entry)

    # -- restart -----------------------------------------------------------------------------

    async def restore(self) -> int:
        """Take back the uses the last run saved. Their layers resolve when looked up again,
        from the TOCs the layer service kept on disk (no registry request) if it keeps any."""
        held = await anyio.to_thread.run_sync(self._state.load)
        await anyio.to_thread.run_sync(self._remove_blob_copies)  # no entry has them open now
        for item in held:
            try:
                ref = Reference.parse(item.ref)
            except StargzError as err:  # a record no parser of ours could have written
                log.error("state names an unusable image %r: %s", item.ref, err)
                continue
            entry = StoreLayer(item.ref, ref, item.info, uses=item.uses)
            self._entries[entry.key] = entry
        if held:
            log.info("restored %d layers podman holds", len(held))
        return len(held)

    async def _save(self) -> None:
        held = [HeldLayer(e.ref_name, e.info, e.uses) for e in self._entries.values()]
        await anyio.to_thread.run_sync(self._state.save, held)

    # -- the blob ----------------------------------------------------------------------------

    async def read_blob(self, entry: StoreLayer, offset: int, size: int) -> bytes:
        fd = await self._blob_fd(entry)
        return await anyio.to_thread.run_sync(os.pread, fd, size, offset)

    async def _blob_fd(self, entry: StoreLayer) -> int:
        async with entry.blob_lock:
            if entry.dropped:
                raise NotFoundError(f"layer {entry.info.digest} of {entry.ref_name} was released")
            if entry.blob_fd is None:
                path = await self._download(entry)
                entry.blob_fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
            return entry.blob_fd

    def _remove_blob_copies(self) -> None:
        if self._blobs.is_dir():
            for path in self._blobs.iterdir():
                path.unlink(missing_ok=True)

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / digest.replace(":", "-")

    async def _download(self, entry: StoreLayer) -> Path:
        """The blob's local copy, downloaded unless another image's entry has it; renamed into
        place only once its digest matched."""
        digest = entry.info.digest
        final = self._blob_path(digest)
        if any(e.blob_fd is not None for e in self._entries.values() if e.info.digest == digest):
            return final
        await anyio.to_thread.run_sync(lambda: self._blobs.mkdir(mode=0o700, exist_ok=True))
        partial = final.with_name(f"{final.name}.{os.getpid()}.{id(entry)}.part")
        out = await anyio.to_thread.run_sync(lambda: open(partial, "wb"))  # noqa: SIM115
        try:
            async for piece in self.registry.stream_blob(entry.ref.repo_only(), digest):
                await anyio.to_thread.run_sync(out.write, piece)
            await anyio.to_thread.run_sync(out.close)
            await anyio.to_thread.run_sync(os.replace, partial, final)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        log.info("layer %s: blob downloaded for podman (%d bytes)", digest, entry.info.size)
        return final

    def _close_blob(self, entry: StoreLayer) -> None:
        fd, entry.blob_fd = entry.blob_fd, None
        if fd is None:
            return
        os.close(fd)
        digest = entry.info.digest
        if not any(e.blob_fd is not None for e in self._entries.values()
                   if e.info.digest == digest):
            self._blob_path(digest).unlink(missing_ok=True)
