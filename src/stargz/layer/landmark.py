"""Where a blob's prefetch ends, read from its fetched tail before the TOC is parsed.

The prefetch range is [0, landmark) and the landmark is a TOC entry, so it is known only once the
TOC is parsed, which takes hundreds of milliseconds for a big TOC. The landmark entry is found
much sooner by decompressing the TOC only up to it (ctr-remote puts it after the prioritized
files, near the TOC's start) and reading that one entry. What is found here only says which bytes
to fetch early: the layer still decodes every chunk against the verified TOC's digests, and a
wrong answer (a hostile TOC) costs bytes fetched for nothing, never a byte served unverified.
"""

from __future__ import annotations

import json
import re

from stargz.errors import StargzError
from stargz.estargz.compression import GzipMemberReader
from stargz.estargz.footer import parse_footer

_LANDMARK_NAME = re.compile(rb'"name"\s*:\s*"(?:\./)?(\.no)?\.prefetch\.landmark"')
_SCAN_PIECE = 256 << 10  # decompressed bytes looked at per step
_CONTEXT = 4 << 10  # bytes of the previous step kept: an entry straddling two steps is whole
_MAX_ENTRY = 64 << 10  # an entry longer than this is not the small landmark file's


def landmark_end(tail: bytes, blob_size: int, max_toc: int) -> int | None:
    """The blob offset the prefetch runs up to, found in ``tail`` (the blob's last bytes,
    holding footer and TOC): the landmark's offset, 0 for the no-prefetch landmark, None when
    it can not be told cheaply (no landmark, a TOC outside ``tail``, zstd, anything odd)."""
    try:
        footer = parse_footer(tail)
        if footer.kind not in ("estargz", "legacy"):
            return None
        start, end = footer.toc_range(blob_size)
    except StargzError:
        return None
    tail_start = blob_size - len(tail)
    if start < tail_start:
        return None
    member = GzipMemberReader(tail[start - tail_start:end - tail_start])
    try:
        return _scan(member, max_toc, footer.data_end)
    except (StargzError, ValueError):
        return None


def _scan(member: GzipMemberReader, max_toc: int, data_end: int) -> int | None:
    text = b""
    seen = 0
    while seen < max_toc:
        piece = member.read(_SCAN_PIECE)
        if not piece:
            return None
        seen += len(piece)
        text = text[-_CONTEXT:] + piece
        found = _LANDMARK_NAME.search(text)
        if found is None:
            continue
        if found.group(1):
            return 0
        while text.find(b"}", found.end()) < 0 and len(text) - found.end() < _MAX_ENTRY:
            more = member.read(_SCAN_PIECE)
            if not more:
                return None
            text += more
        return _entry_offset(text, found.start(), found.end(), data_end)
    return None


def _entry_offset(text: bytes, name_at: int, name_end: int, data_end: int) -> int | None:
    """The ``offset`` of the entry whose name is at ``name_at`` (a flat JSON object)."""
    opening = text.rfind(b"{", 0, name_at)
    closing = text.find(b"}", name_end)
    if opening < 0 or closing < 0:
        return None
    entry = json.loads(text[opening:closing + 1])
    if not isinstance(entry, dict) or entry.get("type") != "reg":
        return None
    offset = entry.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool):
        return None
    return offset if 0 < offset <= data_end else None
