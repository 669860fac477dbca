"""Where conversion reads images from and writes them to: a registry or an OCI layout.

Both sides speak the same small protocol, so the converter does not care which is which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (kept as the JSON object it came from, so no field is lost)."""

    fields: dict[str, Any]

    @property
    def media_type(self) -> str:
        return str(self.fields.get("mediaType", ""))

    @property
    def digest(self) -> str:
        return str(self.fields["digest"])

    @property
    def size(self) -> int:
        return int(self.fields["size"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.fields.get("annotations") or {})

    def replaced(self, **changes: Any) -> Descriptor:
        fields = dict(self.fields)
        fields.update(changes)
        return Descriptor(fields)


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as stored: its raw bytes are what its digest covers."""

    raw: bytes
    media_type: str
    digest: str

    def document(self) -> dict[str, Any]:
        doc = json.loads(self.raw)
        if not isinstance(doc, dict):
            raise ValueError("manifest is not a JSON object")
        return doc


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
