"""Uploads: blobs (monolithic POST + PUT, or chunked PATCHes), cross-repository mounts, manifests.

A failed upload is retried from its POST: a retried PATCH could land on a session whose state
the server and we no longer agree on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from stargz.errors import InvalidArgumentError, RegistryError, VerificationError
from stargz.registry.auth import repository_scope
from stargz.registry.hosts import Endpoint
from stargz.registry.manifest import new_hasher
from stargz.registry.reference import validate_digest
from stargz.registry.session import Session, registry_error

_PIECE = 1 << 20


@dataclass(frozen=True)
class BlobData:
    """What to upload: bytes in memory or a file on disk, with its digest and size."""

    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    async def of(cls, data: bytes | Path, digest: str | None) -> BlobData:
        if digest is not None:
            validate_digest(digest)
        if isinstance(data, bytes | bytearray):
            actual = _digest_bytes(bytes(data), digest)
            blob = cls(actual, len(data), data=bytes(data))
        else:
            path = Path(data)
            actual, size = await asyncio.to_thread(_digest_file, path, digest)
            blob = cls(actual, size, path=path)
        if digest is not None and actual != digest:
            raise VerificationError(f"blob to push has digest {actual}, expected {digest}")
        return blob

    async def pieces(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes [start, end), in pieces (files are never read whole into memory)."""
        if self.data is not None:
            yield self.data[start:end]
            return
        assert self.path is not None
        with self.path.open("rb") as handle:
            handle.seek(start)
            position = start
            while position < end:
                piece = handle.read(min(_PIECE, end - position))
                if not piece:
                    raise RegistryError(f"{self.path} shrank while it was uploaded")
                position += len(piece)
                yield piece


def _digest_bytes(data: bytes, like: str | None) -> str:
    hasher = new_hasher(like or "sha256:")
    hasher.update(data)
    return f"{hasher.name}:{hasher.hexdigest()}"


def _digest_file(path: Path, like: str | None) -> tuple[str, int]:
    hasher = new_hasher(like or "sha256:")
    size = 0
    try:
        with path.open("rb") as handle:
            while piece := handle.read(_PIECE):
                hasher.update(piece)
                size += len(piece)
    except OSError as err:
        raise InvalidArgumentError(f"can not read blob file {path}: {err.strerror}") from None
    return f"{hasher.name}:{hasher.hexdigest()}", size


def _push_scopes(repository: str) -> tuple[str, ...]:
    return (repository_scope(repository, "pull,push"),)


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: the registry gave no upload Location")
    return str(response.url.join(location))


async def _start_upload(session: Session, endpoint: Endpoint, repository: str) -> str:
    url = f"{endpoint.base_url}/{repository}/blobs/uploads/"
    response = await session.send(endpoint, "POST", url, scopes=_push_scopes(repository))
    if response.status_code != 202:
        raise registry_error(response, f"starting an upload to {repository}")
    return _location(response, f"upload to {repository}")


async def push_blob(session: Session, endpoint: Endpoint, repository: str, blob: BlobData,
                    chunk_size: int | None) -> str:
    what = f"upload of {blob.digest} to {repository}"

    async def once() -> str:
        location = await _start_upload(session, endpoint, repository)
        start = 0
        if chunk_size is not None and chunk_size > 0 and blob.size > chunk_size:
            while start < blob.size:
                end = min(blob.size, start + chunk_size)
                location = await _patch(session, endpoint, repository, location, blob, start, end)
                start = end
        final = httpx.URL(location).copy_add_param("digest", blob.digest)
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Length": str(blob.size - start)}
        rest = start

        def body() -> AsyncIterator[bytes]:
            return blob.pieces(rest, blob.size)

        response = await session.send(endpoint, "PUT", str(final), scopes=_push_scopes(repository),
                                      headers=headers, content=body if start < blob.size else b"")
        if response.status_code != 201:
            raise registry_error(response, what)
        _check_digest_header(response, blob.digest, what)
        return blob.digest

    return await session.retry.run(what, once)


async def _patch(session: Session, endpoint: Endpoint, repository: str, location: str,
                 blob: BlobData, start: int, end: int) -> str:
    headers = {"Content-Type": "application/octet-stream",
               "Content-Range": f"{start}-{end - 1}", "Content-Length": str(end - start)}
    response = await session.send(endpoint, "PATCH", location, scopes=_push_scopes(repository),
                                  headers=headers, content=lambda: blob.pieces(start, end))
    if response.status_code != 202:
        raise registry_error(response, f"uploading bytes {start}-{end - 1} of {blob.digest}")
    return _location(response, f"upload of {blob.digest}")


def _check_digest_header(response: httpx.Response, digest: str, what: str) -> None:
    served = response.headers.get("docker-content-digest")
    if served and served != digest:
        raise VerificationError(f"{what}: the registry stored {served}")


async def mount_blob(session: Session, endpoint: Endpoint, repository: str, digest: str,
                     from_repository: str) -> bool:
    url = httpx.URL(f"{endpoint.base_url}/{repository}/blobs/uploads/",
                    params={"mount": digest, "from": from_repository})
    scopes = (*_push_scopes(repository), repository_scope(from_repository, "pull"))

    async def once() -> bool:
        response = await session.send(endpoint, "POST", str(url), scopes=scopes)
        if response.status_code == 201:
            return True
        if response.status_code != 202:
            raise registry_error(response, f"mounting {digest} from {from_repository}")
        # The registry opened an ordinary upload instead; cancel it so nothing lingers.
        cancel = await session.send(endpoint, "DELETE", _location(response, "mount"),
                                    scopes=scopes)
        await cancel.aclose()
        return False

    return await session.retry.run(f"mount of {digest} into {repository}", once)


async def put_manifest(session: Session, endpoint: Endpoint, url: str, repository: str,
                       raw: bytes, media_type: str, digest: str) -> str:
    what = f"pushing manifest {digest} to {repository}"

    async def once() -> str:
        response = await session.send(endpoint, "PUT", url, scopes=_push_scopes(repository),
                                      headers={"Content-Type": media_type}, content=raw)
        if response.status_code not in (200, 201):
            raise registry_error(response, what)
        _check_digest_header(response, digest, what)
        return digest

    return await session.retry.run(what, once)
