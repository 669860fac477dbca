"""What earlier conversions produced, so converting the same layer again costs a HEAD request.

A record maps (source layer digest, conversion options) to the converted blob. It is only a
hint: the converter reuses it when the destination already holds that blob, and converts
afresh otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from stargz.estargz.writer import BuildResult


@dataclass(frozen=True)
class ConversionRecord:
    source_digest: str
    options_key: str
    digest: str
    size: int
    diff_id: str
    annotations: dict[str, str]
    toc_blob_digest: str = ""  # external TOC only: the TOC blob the TOC image needs
    toc_blob_size: int = 0

    @classmethod
    def of(cls, source_digest: str, options_key: str, built: BuildResult) -> ConversionRecord:
        toc = built.external_toc
        return cls(
            source_digest=source_digest,
            options_key=options_key,
            digest=built.blob_digest,
            size=built.blob_size,
            diff_id=built.diff_id,
            annotations=dict(built.annotations()),
            toc_blob_digest="sha256:" + hashlib.sha256(toc).hexdigest() if toc else "",
            toc_blob_size=len(toc),
        )


class ConversionRecords:
    """One small JSON file per record, written atomically."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    @classmethod
    def default(cls) -> ConversionRecords:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return cls(Path(base, "stargz", "convert"))

    def _path(self, source_digest: str, options_key: str) -> Path:
        return self._dir / f"{source_digest.replace(':', '-')}.{options_key}.json"

    def get(self, source_digest: str, options_key: str) -> ConversionRecord | None:
        try:
            data = json.loads(self._path(source_digest, options_key).read_text())
            return ConversionRecord(**data)
        except (OSError, ValueError, TypeError):
            return None  # a missing or damaged record only costs a fresh conversion

    def put(self, record: ConversionRecord) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".rec-")
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(record), out)
            os.replace(tmp, self._path(record.source_digest, record.options_key))
        except OSError:
            pass  # records are an optimisation; a read-only cache must not fail a conversion
