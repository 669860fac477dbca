"""The client's operations on an ``oci:DIR[:TAG]`` reference, so that an OCI layout on disk can
stand wherever a registry can (as a conversion source or destination). Disk work runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from stargz.errors import NotFoundError, RangeError, VerificationError
from stargz.registry.layout import OCILayout
from stargz.registry.manifest import Manifest, Platform, make_manifest, new_hasher
from stargz.registry.ranges import check_ranges
from stargz.registry.reference import Reference, validate_digest
from stargz.registry.upload import BlobData

_PIECE = 1 << 20


def _root(ref: Reference) -> Path:
    assert ref.layout is not None
    return ref.layout


def _read_at(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


class LayoutClient:
    """Async operations on OCI layouts, named like RegistryClient's."""

    async def fetch_manifest(self, ref: Reference) -> Manifest:
        layout = OCILayout(_root(ref))
        if ref.digest is not None:
            raw = await asyncio.to_thread(layout.read_blob, ref.digest)
            return make_manifest(raw, None, ref.digest)
        entry = layout.resolve(ref.tag)
        raw = await asyncio.to_thread(layout.read_blob, entry.digest)
        return make_manifest(raw, entry.media_type, entry.digest)

    async def get_manifest(self, ref: Reference, platform: Platform | None) -> Manifest:
        if ref.digest is not None:
            return await self.fetch_manifest(ref)
        layout = OCILayout(_root(ref))
        return await asyncio.to_thread(layout.get_manifest, ref.tag, platform)

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        layout = OCILayout.create(_root(ref))
        descriptor = await asyncio.to_thread(layout.put_manifest, raw, media_type, ref.tag)
        return descriptor.digest

    async def head_blob(self, ref: Reference, digest: str) -> int:
        try:
            return os.stat(OCILayout(_root(ref)).blob_path(digest)).st_size
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in {_root(ref)}") from None

    async def stream_blob(self, ref: Reference, digest: str) -> AsyncIterator[bytes]:
        path = OCILayout(_root(ref)).blob_path(digest)
        await self.head_blob(ref, digest)
        hasher = new_hasher(digest)
        with path.open("rb") as handle:
            while piece := await asyncio.to_thread(handle.read, _PIECE):
                hasher.update(piece)
                yield piece
        if f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise VerificationError(f"blob {digest} in {_root(ref)} is corrupt")

    async def read_blob_ranges(self, ref: Reference, digest: str,
                               ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        check_ranges(ranges)
        size = await self.head_blob(ref, digest)
        for start, end in ranges:
            if end > size:
                raise RangeError(f"bytes {start}-{end - 1} are not within blob {digest} "
                                 f"({size} bytes)")
        path = OCILayout(_root(ref)).blob_path(digest)
        return [await asyncio.to_thread(_read_at, path, s, e) for s, e in ranges]

    async def push_blob(self, ref: Reference, data: bytes | Path, digest: str | None) -> str:
        layout = OCILayout.create(_root(ref))
        if isinstance(data, bytes | bytearray):
            written = await asyncio.to_thread(layout.write_blob, bytes(data))
            if digest is not None and written != digest:
                raise VerificationError(f"blob to push has digest {written}, expected {digest}")
            return written
        if digest is None:
            digest = (await BlobData.of(Path(data), None)).digest
        validate_digest(digest)
        if not layout.has_blob(digest):
            await asyncio.to_thread(layout.copy_blob_file, Path(data), digest)
        return digest

    async def mount_blob(self, ref: Reference, digest: str) -> bool:
        """A layout has no repositories: the blob is "mounted" when the layout has it."""
        try:
            return OCILayout(_root(ref)).has_blob(digest)
        except NotFoundError:
            return False
