"""Structural checks of a TOC and the name index a reader serves lookups from.

Everything a hostile TOC could use to confuse a reader is refused here: chunk lists
that do not tile their file, offsets outside the data, duplicated chunk positions,
missing digests, hardlinks to nothing (or loops), and entries under non-directories.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

from stargz.errors import TOCError
from stargz.estargz.chunks import Chunk
from stargz.estargz.toc import TOCEntry

IMPLIED_DIR_MODE = 0o755
_MAX_HARDLINK_HOPS = 64


@dataclass
class _FileChunks:
    """The data entries (reg then chunk...) of one regular file."""

    reg: TOCEntry
    parts: list[TOCEntry] = field(default_factory=list)


def _data_entries(entries: Sequence[TOCEntry]) -> list[_FileChunks]:
    """Group each reg entry with the chunk entries that follow it."""
    files: list[_FileChunks] = []
    current: _FileChunks | None = None
    for entry in entries:
        if entry.type == "chunk":
            if current is None or entry.name != current.reg.name:
                raise TOCError(f"chunk entry {entry.name!r} does not follow its file's reg entry")
            current.parts.append(entry)
        elif entry.type == "reg":
            current = _FileChunks(entry, [entry])
            files.append(current)
        else:
            current = None
    return files


def _check_tiling(file: _FileChunks) -> None:
    """The chunks must cover [0, size) in order, without gaps or overlaps."""
    size = file.reg.size
    name = file.reg.name
    if size == 0:
        if len(file.parts) > 1 or file.reg.chunk_size or file.reg.chunk_offset:
            raise TOCError(f"empty file {name!r} has chunks")
        return
    pos = 0
    for i, part in enumerate(file.parts):
        last = i == len(file.parts) - 1
        if part.chunk_offset != pos:
            raise TOCError(f"{name!r}: chunk at {part.chunk_offset} where {pos} was expected")
        length = part.chunk_size if part.chunk_size else size - pos
        if length <= 0 or pos + length > size or (last and pos + length != size):
            raise TOCError(f"{name!r}: chunk of {part.chunk_size} at {pos} exceeds size {size}")
        pos += length


def _chunk_digest_fallback(files: list[_FileChunks]) -> bool:
    """True when chunkDigests may be taken from whole-file digests (old single-chunk TOCs)."""
    nonempty = [f for f in files if f.reg.size > 0]
    if all(p.chunk_digest for f in nonempty for p in f.parts):
        return False
    if any(len(f.parts) > 1 for f in nonempty) or not all(f.reg.digest for f in nonempty):
        raise TOCError("some chunks have no chunkDigest, so they can not be verified")
    return True


def build_chunks(entries: Sequence[TOCEntry], data_end: int | None) -> dict[str, list[Chunk]]:
    """Validate every file's data entries and turn them into Chunks, keyed by cleaned path."""
    files = _data_entries(entries)
    for f in files:
        _check_tiling(f)
    fallback = _chunk_digest_fallback(files)
    limit = data_end if data_end is not None else 1 << 63
    offsets = sorted({p.offset for f in files if f.reg.size > 0 for p in f.parts})
    seen: set[tuple[int, int]] = set()
    out: dict[str, list[Chunk]] = {}
    for f in files:
        chunks: list[Chunk] = []
        for part in f.parts if f.reg.size > 0 else []:
            key = (part.offset, part.inner_offset)
            if key in seen:
                raise TOCError(f"{f.reg.name!r}: offset {part.offset} is used by two chunks")
            seen.add(key)
            if part.offset >= limit:
                raise TOCError(f"{f.reg.name!r}: offset {part.offset} is past the data end {limit}")
            next_i = bisect.bisect_right(offsets, part.offset)
            end = offsets[next_i] if next_i < len(offsets) else limit
            chunk_len = part.chunk_size or f.reg.size - part.chunk_offset
            digest = f.reg.digest if fallback else part.chunk_digest
            chunks.append(
                Chunk(f.reg.name, part.chunk_offset, chunk_len, part.offset, end,
                      part.inner_offset, digest)
            )
        out[f.reg.name] = chunks
    return out


def parent_of(name: str) -> str:
    return posixpath.dirname(name)


class TOCIndex:
    """Names → entries, directory children, link counts, all checked for consistency."""

    def __init__(self, entries: Sequence[TOCEntry], data_end: int | None) -> None:
        self.chunks = build_chunks(entries, data_end)
        self.raw: dict[str, TOCEntry] = {}  # hardlinks kept as their own entries
        for entry in entries:
            if entry.type != "chunk":
                self.raw[entry.name] = entry  # a later duplicate wins, as in tar
        if "" not in self.raw:
            self.raw[""] = TOCEntry(name="", type="dir", mode=IMPLIED_DIR_MODE)
        elif self.raw[""].type != "dir":
            raise TOCError("the TOC's root entry is not a directory")
        self._add_implied_dirs()
        self.resolved = {name: self._resolve(entry) for name, entry in self.raw.items()}
        self.children: dict[str, dict[str, TOCEntry]] = {}
        self.link_counts: dict[int, int] = {}
        self._link_tree()
        self.order = self._ordered_names(entries)

    def _add_implied_dirs(self) -> None:
        for name in list(self.raw):
            parent = parent_of(name) if name else None
            while parent is not None and parent not in self.raw:
                self.raw[parent] = TOCEntry(name=parent, type="dir", mode=IMPLIED_DIR_MODE)
                parent = parent_of(parent) if parent else None

    def _resolve(self, entry: TOCEntry) -> TOCEntry:
        seen = 0
        while entry.type == "hardlink":
            target = self.raw.get(entry.link_name)
            if target is None or entry.link_name == "":
                raise TOCError(f"hardlink {entry.name!r} points to missing {entry.link_name!r}")
            seen += 1
            if seen > _MAX_HARDLINK_HOPS or target is entry:
                raise TOCError(f"hardlink {entry.name!r} is part of a link loop")
            entry = target
        if seen and entry.type == "dir":
            raise TOCError(f"a hardlink points to directory {entry.name!r}")
        return entry

    def _link_tree(self) -> None:
        for name in self.raw:
            if name == "":
                continue
            parent = self.raw[parent_of(name)]
            if parent.type != "dir":
                raise TOCError(f"{name!r} is under {parent.name!r}, which is not a directory")
            target = self.resolved[name]
            self.children.setdefault(parent.name, {})[posixpath.basename(name)] = target
            self.link_counts[id(target)] = self.link_counts.get(id(target), 0) + 1

    def _ordered_names(self, entries: Sequence[TOCEntry]) -> list[str]:
        """Every name once, parents before children, otherwise in TOC order."""
        order: list[str] = []
        placed: set[str] = set()

        def place(name: str) -> None:
            if name in placed:
                return
            if name:
                place(parent_of(name))
            placed.add(name)
            order.append(name)

        place("")
        for entry in entries:
            if entry.type != "chunk":
                place(entry.name)
        for name in self.raw:
            place(name)
        return order

    def nlink(self, entry: TOCEntry) -> int:
        if entry.type == "dir":
            kids = self.children.get(entry.name, {})
            return 2 + sum(1 for k in kids.values() if k.type == "dir")
        return max(1, self.link_counts.get(id(entry), 1))
