"""Where conversion reads images from and writes them to: a registry or an OCI layout.

Both sides speak the same small protocol, so the converter does not care which is which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from stargz.errors import VerificationError
from stargz.registry.client import RegistryClient
from stargz.registry.layout import OCILayout
from stargz.registry.manifest import Descriptor, Manifest, make_manifest, new_hasher
from stargz.registry.reference import Reference

ProgressFn = Callable[[int], None]
_UPLOAD_CHUNK = 8 << 20  # chunked uploads keep memory flat for any layer size


class ImageStore(Protocol):
    """One side of a conversion."""

    @property
    def display_name(self) -> str: ...

    async def get_manifest(self, reference: str) -> Manifest:
        """The manifest or index named by a tag or digest."""
        ...

    async def get_blob(self, digest: str) -> bytes:
        """A small blob (a config), digest-verified."""
        ...

    async def fetch_blob(self, desc: Descriptor, dest: Path, progress: ProgressFn) -> None:
        """Stream a blob into ``dest``, digest-verified, never holding it in memory."""
        ...

    async def has_blob(self, digest: str) -> bool: ...

    async def push_blob(
        self, desc: Descriptor, source: Path | bytes, progress: ProgressFn
    ) -> None:
        """Upload a blob from a file or bytes (a no-op when the store already has it)."""
        ...

    async def put_manifest(self, reference: str, manifest: Manifest) -> None:
        """Store a manifest under a tag, or by its digest when ``reference`` is the digest."""
        ...

    async def aclose(self) -> None: ...


class RegistryStore:
    """A repository in a registry, through the registry client."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self._client = client
        self._repo = ref.repo_only()

    @property
    def display_name(self) -> str:
        return self._repo.name

    async def get_manifest(self, reference: str) -> Manifest:
        return await self._client.fetch_manifest(self._named(reference))

    async def get_blob(self, digest: str) -> bytes:
        return await self._client.get_blob(self._repo, digest)

    async def fetch_blob(self, desc: Descriptor, dest: Path, progress: ProgressFn) -> None:
        done = 0
        with dest.open("wb") as out:
            async for piece in self._client.stream_blob(self._repo, desc.digest):
                await asyncio.to_thread(out.write, piece)
                done += len(piece)
                progress(done)

    async def has_blob(self, digest: str) -> bool:
        return await self._client.blob_exists(self._repo, digest)

    async def push_blob(self, desc: Descriptor, source: Path | bytes, progress: ProgressFn) -> None:
        await self._client.push_blob(self._repo, source, desc.digest, chunk_size=_UPLOAD_CHUNK)
        progress(desc.size)

    async def put_manifest(self, reference: str, manifest: Manifest) -> None:
        await self._client.put_manifest(self._named(reference), manifest.raw, manifest.media_type)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _named(self, reference: str) -> Reference:
        if reference.startswith("sha256:"):
            return self._repo.with_digest(reference)
        return self._repo.with_tag(reference)


class LayoutStore:
    """An OCI image layout directory (``oci:DIR[:TAG]``)."""

    def __init__(self, layout: OCILayout) -> None:
        self._layout = layout

    @property
    def display_name(self) -> str:
        return f"oci:{self._layout.root}"

    async def get_manifest(self, reference: str) -> Manifest:
        if reference.startswith("sha256:"):
            digest, media_type = reference, None
        else:
            entry = self._layout.resolve(reference or None)
            digest, media_type = entry.digest, entry.media_type
        raw = await asyncio.to_thread(self._layout.read_blob, digest)
        return make_manifest(raw, media_type, digest)

    async def get_blob(self, digest: str) -> bytes:
        return await asyncio.to_thread(self._layout.read_blob, digest)

    async def fetch_blob(self, desc: Descriptor, dest: Path, progress: ProgressFn) -> None:
        def copy() -> None:
            hasher = new_hasher(desc.digest)
            with self._layout.open_blob(desc.digest) as src, dest.open("wb") as out:
                while piece := src.read(_UPLOAD_CHUNK):
                    hasher.update(piece)
                    out.write(piece)
            if f"{hasher.name}:{hasher.hexdigest()}" != desc.digest:
                raise VerificationError(f"blob {desc.digest} in {self.display_name} is corrupt")

        await asyncio.to_thread(copy)
        progress(desc.size)

    async def has_blob(self, digest: str) -> bool:
        return self._layout.has_blob(digest)

    async def push_blob(self, desc: Descriptor, source: Path | bytes, progress: ProgressFn) -> None:
        if isinstance(source, bytes):
            await asyncio.to_thread(self._layout.write_blob, source)
        else:
            await asyncio.to_thread(self._layout.copy_blob_file, source, desc.digest)
        progress(desc.size)

    async def put_manifest(self, reference: str, manifest: Manifest) -> None:
        if reference.startswith("sha256:"):
            await asyncio.to_thread(self._layout.write_blob, manifest.raw)
        else:
            await asyncio.to_thread(
                self._layout.put_manifest, manifest.raw, manifest.media_type, reference
            )

    async def aclose(self) -> None:
        pass
