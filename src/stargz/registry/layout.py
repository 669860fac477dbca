"""An OCI image layout on disk (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``), read and
written as a source or destination of images. Writes are atomic: a temporary file, then rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from stargz.errors import NotFoundError, RegistryError, VerificationError
from stargz.registry.manifest import (
    OCI_INDEX,
    Descriptor,
    Manifest,
    Platform,
    make_manifest,
    new_hasher,
    select_platform,
)
from stargz.registry.reference import validate_digest

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
_PIECE = 1 << 20


class OCILayout:
    """A layout directory: ``create`` makes an empty one, the constructor opens an existing one."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not (self.root / LAYOUT_FILE).is_file():
            raise NotFoundError(f"{self.root} is not an OCI image layout (no {LAYOUT_FILE})")

    @classmethod
    def create(cls, root: Path | str) -> OCILayout:
        """Open ``root`` as a layout, making it (empty) first if it is not one yet."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / LAYOUT_FILE).is_file():
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            _write_atomic(root / LAYOUT_FILE, json.dumps(LAYOUT_VERSION).encode())
            _write_atomic(root / "index.json", _index_bytes([]))
        return cls(root)

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = validate_digest(digest).partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in {self.root}") from None

    def read_blob(self, digest: str) -> bytes:
        """A whole blob, digest-checked."""
        with self.open_blob(digest) as handle:
            data = handle.read()
        hasher = new_hasher(digest)
        hasher.update(data)
        if f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise VerificationError(f"blob {digest} in {self.root} is corrupt")
        return data

    def write_blob(self, data: bytes) -> str:
        hasher = new_hasher("sha256:")
        hasher.update(data)
        digest = f"sha256:{hasher.hexdigest()}"
        if not self.has_blob(digest):
            _write_atomic(self.blob_path(digest), data)
        return digest

    def write_blob_from(self, pieces: Iterator[bytes], digest: str) -> None:
        """Store a blob from pieces, checked against ``digest`` before it becomes visible."""
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        hasher = new_hasher(digest)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            try:
                for piece in pieces:
                    hasher.update(piece)
                    tmp.write(piece)
                if f"{hasher.name}:{hasher.hexdigest()}" != digest:
                    raise VerificationError(f"blob written to {self.root} is not {digest}")
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, target)

    def copy_blob_file(self, source: Path, digest: str) -> None:
        with source.open("rb") as handle:
            self.write_blob_from(iter(lambda: handle.read(_PIECE), b""), digest)

    # -- manifests and tags ------------------------------------------------------------------

    def index(self) -> list[Descriptor]:
        try:
            data = json.loads((self.root / "index.json").read_bytes())
            return [Descriptor.from_dict(d) for d in data.get("manifests") or []]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise RegistryError(f"{self.root}/index.json is missing or not valid JSON") from None

    def resolve(self, tag: str | None) -> Descriptor:
        """The index entry named ``tag``; without a tag, the only entry (or the one tagged
        ``latest``)."""
        entries = self.index()
        if tag is None:
            if len(entries) == 1:
                return entries[0]
            tag = "latest"
        for entry in entries:
            if entry.annotations.get(REF_NAME) == tag:
                return entry
        names = ", ".join(sorted(e.annotations.get(REF_NAME, "?") for e in entries)) or "none"
        raise NotFoundError(f"no image tagged {tag!r} in {self.root} (has: {names})")

    def get_manifest(self, tag: str | None = None, platform: Platform | None = None) -> Manifest:
        """The image manifest for ``tag``, resolving an index to ``platform`` (default: host)."""
        entry = self.resolve(tag)
        manifest = make_manifest(self.read_blob(entry.digest), entry.media_type, entry.digest)
        for _ in range(2):
            if not manifest.is_index:
                return manifest
            chosen = select_platform(manifest, platform or Platform.host())
            manifest = make_manifest(self.read_blob(chosen.digest), chosen.media_type,
                                     chosen.digest)
        raise RegistryError(f"{self.root}: indexes nested too deeply")

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None = None,
                     platform: Platform | None = None) -> Descriptor:
        """Store a manifest blob and list it in index.json (replacing any entry with the tag)."""
        digest = self.write_blob(raw)
        annotations = {REF_NAME: tag} if tag else {}
        descriptor = Descriptor(media_type, digest, len(raw), annotations, platform)
        entries = [e for e in self.index()
                   if not (tag and e.annotations.get(REF_NAME) == tag)]
        entries.append(descriptor)
        _write_atomic(self.root / "index.json", _index_bytes(entries))
        return descriptor


def _index_bytes(entries: list[Descriptor]) -> bytes:
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                             "manifests": [e.to_dict() for e in entries]}
    return json.dumps(index, indent=2).encode() + b"\n"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    try:
        os.replace(tmp.name, path)
    except OSError:
        os.unlink(tmp.name)
        raise

