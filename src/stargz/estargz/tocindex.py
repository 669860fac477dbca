"""Structural checks of a TOC and the name index a reader serves lookups from.

Everything a hostile TOC could use to confuse a reader, or to make it spend without bound,
is refused here: chunk lists that do not tile their file, offsets outside the data,
duplicated or overlapping chunk positions, chunks over the size limit, a file's chunks out
of order in the blob, missing digests, hardlinks to nothing (or loops), entries under an
earlier non-directory, and more entries (listed or implied) than the limits allow. Entries
under the layer's own symlinks go where containerd's applier puts them (tocplace).

Everything here is iterative and linear in the TOC's size: no recursion, whatever the depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import msgspec

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.chunks import Chunk
from stargz.estargz.toc import TOCEntry
from stargz.estargz.tocplace import Placer

IMPLIED_DIR_MODE = 0o755
_MAX_HARDLINK_HOPS = 64


def parent_of(name: str) -> str:
    return name.rpartition("/")[0]


def base_of(name: str) -> str:
    return name.rpartition("/")[2]


class TOCIndex:
    """Names → entries, directory children, link counts, all checked for consistency.

    ``entries`` holds every path once (the later of duplicates, as in tar), parents before
    children and otherwise in TOC order, with the directories the TOC only implies."""

    def __init__(
        self,
        entries: Sequence[TOCEntry],
        data_end: int | None,
        limits: LimitsConfig | None = None,
    ) -> None:
        limits = limits or LimitsConfig()
        self.chunks = build_chunks(entries, data_end, limits)
        self.entries: dict[str, TOCEntry] = {}
        self._placer: Placer | None = None
        self.implied: set[str] = set()  # directories no entry lists (their parents are)
        self._positions: dict[str, int] = {"": -1}  # where each name was (last) listed
        self._files_named = _count_file_names(entries) if _has_symlink(entries) else {}
        self._implied_budget = _ImpliedBudget(len(entries), limits)
        self._add_all(entries)
        self.links: dict[str, TOCEntry] = {}  # hardlink name → its final target
        self._resolve_links()
        self.children: dict[str, list[TOCEntry]] = {}  # as listed: hardlinks unresolved
        self._link_counts: dict[int, int] = {}  # only targets of hardlinks (others: 1)
        self._link_tree()
        self._positions.clear()  # only needed while building
        # Each path's number (its place in ``entries``): a compact key for it, from which a
        # filesystem computes inode numbers instead of keeping a table of them.
        self._in_order = list(self.entries.values())
        self._numbers = dict(zip(self.entries, range(len(self._in_order)), strict=True))

    def _add_all(self, entries: Sequence[TOCEntry]) -> None:
        known = self.entries
        known[""] = TOCEntry(name="", type="dir", mode=IMPLIED_DIR_MODE)
        placer = self._placer = Placer(known)
        for position, listed in enumerate(entries):
            if listed.type == "chunk":
                continue
            entry = placer.place(listed)
            name = entry.name
            if name != listed.name:
                self._move_chunks(listed, name)
            if name not in known:
                self._add_parents(name, position)
            placer.noting(entry)
            known[name] = entry  # a later duplicate wins, keeping the first one's place
            self._positions[name] = position
            self.implied.discard(name)
        if known[""].type != "dir":
            raise TOCError("the TOC's root entry is not a directory")
        self._drop_replaced()

    def _move_chunks(self, listed: TOCEntry, name: str) -> None:
        """A file written through a symlink is served from where it lands."""
        if listed.type != "reg" or listed.size == 0:
            return
        if self._files_named.get(listed.name, 0) > 1:
            raise TOCError(f"{listed.name!r} is listed twice and written through a symlink")
        self.chunks[name] = tuple(msgspec.structs.replace(chunk, path=name)
                                  for chunk in self.chunks.pop(listed.name))

    def _add_parents(self, name: str, position: int) -> None:
        """Implied directories for the missing parents of ``name``, outermost first."""
        missing: list[str] = []
        parent = parent_of(name) if name else ""
        while parent not in self.entries:
            missing.append(parent)
            parent = parent_of(parent)
        for dirname in reversed(missing):
            self._implied_budget.spend(dirname)
            self.entries[dirname] = TOCEntry(name=dirname, type="dir", mode=IMPLIED_DIR_MODE)
            self._positions[dirname] = position
            self.implied.add(dirname)

    def _drop_replaced(self) -> None:
        """Entries under a directory that a later entry replaced by a non-directory are gone,
        as containerd's applier removes them; under one listed earlier, the layer is bad."""
        known, positions = self.entries, self._positions
        dropped: set[str] = set()
        for name in list(known):
            if not name:
                continue
            parent_name = parent_of(name)
            if parent_name in dropped or (known[parent_name].type != "dir"
                                          and positions[parent_name] > positions[name]):
                dropped.add(name)
                del known[name]
                self.chunks.pop(name, None)

    def _resolve_links(self) -> None:
        for name, entry in self.entries.items():
            if entry.type == "hardlink":
                self.links[name] = self._resolve(entry)

    def _resolve(self, entry: TOCEntry) -> TOCEntry:
        seen = 0
        while entry.type == "hardlink":
            target = self.entries.get(entry.link_name) or self._through_symlinks(entry.link_name)
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
        for name, entry in self.entries.items():
            if name == "":
                continue
            parent = self.entries[parent_of(name)]
            if parent.type != "dir":
                raise TOCError(f"{name!r} is under {parent.name!r}, which is not a directory")
            self.children.setdefault(parent.name, []).append(entry)
            if entry.type == "hardlink":
                target = self.links[name]
                self._link_counts[id(target)] = self._link_counts.get(id(target), 1) + 1

    def _through_symlinks(self, name: str) -> TOCEntry | None:
        """A hardlink's target named through a symlink of this layer, as containerd finds it."""
        if self._placer is None or not name:
            return None
        parent, _, base = name.rpartition("/")
        where = self._placer.resolve_dir(parent)
        return self.entries.get(f"{where}/{base}" if where else base)

    def lookup(self, name: str) -> TOCEntry | None:
        """The entry at the cleaned ``name``; a hardlink gives its target's entry."""
        entry = self.entries.get(name)
        if entry is not None and entry.type == "hardlink":
            return self.links[name]
        return entry

    def listdir(self, name: str) -> dict[str, TOCEntry]:
        """A directory's children by base name (hardlinks resolved to their targets)."""
        return {
            base_of(child.name): self.links[child.name] if child.type == "hardlink" else child
            for child in self.children.get(name, ())
        }

    def walk(self) -> Iterator[TOCEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self._in_order)

    def number_of(self, entry: TOCEntry) -> int:
        """The number of a path's entry, as ``lookup`` or ``listdir`` gave it."""
        return self._numbers[entry.name]

    def entry_at(self, number: int) -> TOCEntry | None:
        """The entry numbered ``number`` (None when no entry has that number)."""
        return self._in_order[number] if 0 <= number < len(self._in_order) else None

    def nlink(self, entry: TOCEntry) -> int:
        if entry.type == "dir":
            kids = self.children.get(entry.name, ())
            return 2 + sum(1 for k in kids if k.type == "dir")
        return self._link_counts.get(id(entry), 1)


def _has_symlink(entries: Sequence[TOCEntry]) -> bool:
    return any(entry.type == "symlink" for entry in entries)


def _count_file_names(entries: Sequence[TOCEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.type == "reg":
            counts[entry.name] = counts.get(entry.name, 0) + 1
    return counts


class _ImpliedBudget:
    """Directories the TOC implies count against max_toc_entries, and their names against
    max_toc_bytes: a few deep names must not make the index hold millions of directories."""

    def __init__(self, listed: int, limits: LimitsConfig) -> None:
        self._entries_left = limits.max_toc_entries - listed
        self._bytes_left = limits.max_toc_bytes
        self._limits = limits

    def spend(self, dirname: str) -> None:
        self._entries_left -= 1
        self._bytes_left -= len(dirname)
        if self._entries_left < 0:
            raise TOCError(f"TOC entries and the directories they imply are more than "
                           f"{self._limits.max_toc_entries} (limits.max_toc_entries)")
        if self._bytes_left < 0:
            raise TOCError(f"the directories the TOC implies have names of more than "
                           f"{self._limits.max_toc_bytes} bytes (limits.max_toc_bytes)")


class _FileChunks:
    """The data entries (reg then chunk...) of one regular file."""

    __slots__ = ("parts", "reg")

    def __init__(self, reg: TOCEntry) -> None:
        self.reg = reg
        self.parts = [reg]


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
            current = _FileChunks(entry)
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


def build_chunks(
    entries: Sequence[TOCEntry], data_end: int | None, limits: LimitsConfig | None = None
) -> dict[str, tuple[Chunk, ...]]:
    """Validate every file's data entries and turn them into Chunks, keyed by cleaned path."""
    every_file = _data_entries(entries)
    for f in every_file:
        _check_tiling(f)
    files = [f for f in every_file if f.reg.size > 0]
    fallback = _chunk_digest_fallback(files)
    limit = data_end if data_end is not None else 1 << 63
    layout = _BlobLayout(files, limit, limits or LimitsConfig())
    out: dict[str, tuple[Chunk, ...]] = {}
    for f in files:
        out[f.reg.name] = tuple(
            Chunk(f.reg.name, part.chunk_offset, part.chunk_size or f.reg.size - part.chunk_offset,
                  part.offset, layout.member_end(part.offset), part.inner_offset,
                  f.reg.digest if fallback else part.chunk_digest)
            for part in f.parts
        )
    return out


_Placed = tuple[int, int, int, int]  # offset, inner offset, file number, part number


class _BlobLayout:
    """Where the chunks sit in the blob, checked in blob order: each (member, inner offset)
    used once, chunks sharing a member do not overlap, each member's decompressed extent and
    compressed size are within limits.max_chunk_bytes (and twice that), and a file's chunks
    lie one after another, in file order, as every writer lays them out."""

    def __init__(self, files: list[_FileChunks], data_end: int, limits: LimitsConfig) -> None:
        self._files = files
        self._data_end = data_end
        self._max = limits.max_chunk_bytes
        offsets = sorted({part.offset for f in files for part in f.parts})
        # where the member (or frame) starting at an offset ends: the next one's start
        self._ends = dict(zip(offsets, [*offsets[1:], data_end], strict=False))
        self._check(self._in_blob_order())

    def member_end(self, offset: int) -> int:
        return self._ends[offset]

    def _in_toc_order(self) -> Iterator[_Placed]:
        for fi, f in enumerate(self._files):
            for pi, part in enumerate(f.parts):
                yield part.offset, part.inner_offset, fi, pi

    def _in_blob_order(self) -> Iterable[_Placed]:
        """The chunks by position; usually the TOC's own order, which needs no sorting."""
        previous = (-1, -1)
        for placed in self._in_toc_order():
            if placed[:2] <= previous:
                return sorted(self._in_toc_order())
            previous = placed[:2]
        return self._in_toc_order()

    def _check(self, placed: Iterable[_Placed]) -> None:
        files = self._files
        previous: _Placed = (-1, -1, -1, -1)
        inner_end = 0  # where the previous chunk in the same member ends
        for offset, inner, fi, pi in placed:
            f = files[fi]
            name = f.reg.name
            if offset >= self._data_end:
                raise TOCError(f"{name!r}: offset {offset} is past the data end {self._data_end}")
            if offset == previous[0] and inner < inner_end:
                raise TOCError(f"{name!r}: offset {offset} is used by two chunks")
            follows = fi == previous[2] and pi == previous[3] + 1
            starts = pi == 0 and (
                previous[2] < 0 or previous[3] == len(files[previous[2]].parts) - 1)
            if not (follows or starts):
                raise TOCError(f"{name!r}: its chunks are not laid out in order in the blob")
            part = f.parts[pi]
            inner_end = inner + (part.chunk_size or f.reg.size - part.chunk_offset)
            self._check_size(name, part, offset, inner_end)
            previous = (offset, inner, fi, pi)

    def _check_size(self, name: str, part: TOCEntry, offset: int, extent: int) -> None:
        if extent > self._max:
            raise TOCError(
                f"{name!r}: the chunk at {part.chunk_offset} needs {extent} decompressed bytes, "
                f"more than the limit of {self._max} (limits.max_chunk_bytes)")
        compressed = self.member_end(offset) - offset
        if compressed > 2 * self._max:
            raise TOCError(
                f"{name!r}: the chunk at {part.chunk_offset} is in {compressed} compressed "
                f"bytes, more than the limit of {2 * self._max} (2 x limits.max_chunk_bytes)")
