"""Resolutions kept on disk, so a layer can be mounted again after a restart without its registry.

A layer is mounted from its footer and TOC; once they verified against the layer's TOC digest,
the fetched tail of the blob (footer + TOC, as fetched) and, for an external-TOC layer, its TOC
blob are written beside the chunk cache: ``<cache dir>/tocs/<TOC digest hex>``, a small JSON
header (the layer's source: digest, size, repository, TOC digest) then the bytes. Files are
written to a temp name, fsynced and renamed (0600), so a crash leaves a temp file that is swept.

Nothing read back is trusted: the header must name the wanted blob and TOC digest, and the TOC
is parsed and verified against the TOC digest again (a mismatch drops the file and the layer is
resolved from the registry as before).
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from stargz.cache.disk import TEMP_PREFIX, write_atomically
from stargz.config import LimitsConfig
from stargz.errors import StargzError
from stargz.estargz.reader import VerifiedBlob, open_blob, open_blob_external
from stargz.layer.opening import TailSource

log = logging.getLogger(__name__)

TOCS_DIR = "tocs"
FORMAT_VERSION = 1
_HEADER_LEN = struct.Struct(">I")
MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class PersistedTail:
    """What a layer was resolved from: the blob's fetched tail and its external TOC if any."""

    digest: str
    size: int
    repository: str
    toc_digest: str
    tail_base: int
    tail_bytes: bytes
    external_toc: bytes | None = None


class TOCStore:
    """Verified footers and TOCs by TOC digest, under ``<cache dir>/tocs``."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir) / TOCS_DIR
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in self.root.iterdir():  # what a crash left half written
            if entry.name.startswith(TEMP_PREFIX):
                entry.unlink(missing_ok=True)

    def path_of(self, toc_digest: str) -> Path | None:
        algo, _, hex_digest = toc_digest.partition(":")
        if algo != "sha256" or len(hex_digest) != 64 or not _is_hex(hex_digest):
            return None
        return self.root / hex_digest

    def save(self, kept: PersistedTail) -> None:
        """Write ``kept`` (its TOC already verified) atomically; OSError when the disk fails."""
        path = self.path_of(kept.toc_digest)
        if path is None or path.exists():
            return
        header = json.dumps({
            "version": FORMAT_VERSION, "digest": kept.digest, "size": kept.size,
            "repository": kept.repository, "toc_digest": kept.toc_digest,
            "tail_base": kept.tail_base, "tail_len": len(kept.tail_bytes),
            "external_len": len(kept.external_toc) if kept.external_toc is not None else -1,
        }).encode()
        write_atomically(path, [_HEADER_LEN.pack(len(header)), header, kept.tail_bytes,
                                kept.external_toc or b""], "toc-write")

    def load(self, digest: str, toc_digest: str,
             limits: LimitsConfig) -> tuple[int, VerifiedBlob] | None:
        """The blob's size and its TOC, verified again, or None (absent, or not what it should
        be: then the file is dropped and logged)."""
        path = self.path_of(toc_digest)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("persisted TOC %s can not be read: %s", path, err.strerror)
            return None
        try:
            return _parse(data, digest, toc_digest, limits)
        except (StargzError, ValueError, KeyError, TypeError, struct.error) as err:
            log.warning("persisted TOC of layer %s is not valid, dropped: %s", digest, err)
            path.unlink(missing_ok=True)
            return None


def _parse(data: bytes, digest: str, toc_digest: str,
           limits: LimitsConfig) -> tuple[int, VerifiedBlob] | None:
    (header_len,) = _HEADER_LEN.unpack_from(data)
    if header_len > MAX_HEADER:
        raise ValueError(f"header of {header_len} bytes")
    start = _HEADER_LEN.size
    header = json.loads(data[start:start + header_len])
    if header["version"] != FORMAT_VERSION or header["toc_digest"] != toc_digest:
        raise ValueError("header names another TOC digest or format")
    if header["digest"] != digest:
        return None  # the same TOC in another blob: resolved from the registry
    size, base, tail_len = int(header["size"]), int(header["tail_base"]), int(header["tail_len"])
    external_len = int(header["external_len"])
    body = start + header_len
    tail = data[body:body + tail_len]
    if len(tail) != tail_len or base + tail_len != size or base < 0:
        raise ValueError("tail truncated")
    source = TailSource(size, base, tail)
    if external_len < 0:
        unverified = open_blob(source, limits)
    else:
        toc_blob = data[body + tail_len:body + tail_len + external_len]
        if len(toc_blob) != external_len:
            raise ValueError("external TOC truncated")
        unverified = open_blob_external(source, toc_blob, limits)
    return size, unverified.verify(toc_digest)


def _is_hex(name: str) -> bool:
    return all(c in "0123456789abcdef" for c in name)
