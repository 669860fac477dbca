"""Chunks: the unit of fetching, decompressing and verifying file data, and the checked table
of every file's chunks a TOC describes."""

from __future__ import annotations

import bisect
import operator
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, islice, repeat

import msgspec

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.toc import TOCEntry


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """A piece of a regular file, as the TOC describes it (a compact immutable record).

    The chunk's bytes are ``chunk_size`` bytes starting ``inner_offset`` bytes into the
    decompressed member/frame(s) held in the blob at [compressed_offset, compressed_end).
    ``digest`` is the sha256 the decompressed bytes must have.
    """

    path: str
    chunk_offset: int
    chunk_size: int
    compressed_offset: int
    compressed_end: int
    inner_offset: int
    digest: str

    @property
    def compressed_size(self) -> int:
        return self.compressed_end - self.compressed_offset

    @property
    def end(self) -> int:
        """File offset just past this chunk."""
        return self.chunk_offset + self.chunk_size


_TYPE = operator.attrgetter("type")
_OFFSET = operator.attrgetter("offset")
_INNER_OFFSET = operator.attrgetter("inner_offset")
_CHUNK_DIGEST = operator.attrgetter("chunk_digest")
_SIZE = operator.attrgetter("size")
_NAME = operator.attrgetter("name")
_DIGEST = operator.attrgetter("digest")
_BLOB_ORDER = operator.attrgetter("compressed_offset", "inner_offset")


class ChunkTable:
    """Every regular file's chunks, checked once for the whole TOC (see ``check``).

    A file of one chunk (nearly every file) keeps nothing here: its Chunk is made from its
    entry when asked for, so a layer of a million files costs a sorted array of offsets, not
    a million records. Files of several chunks keep theirs, by name."""

    def __init__(self, entries: Sequence[TOCEntry], data_end: int | None,
                 limits: LimitsConfig | None = None) -> None:
        limits = limits or LimitsConfig()
        self._data_end = data_end if data_end is not None else 1 << 63
        every_file, parts_of = _data_files(entries)
        _check_single_tiling(every_file, parts_of)
        for parts in parts_of.values():
            _check_tiling(parts)
        files = [f for f in every_file if f.size > 0]
        parts_in_order = _parts_in_toc_order(files, parts_of)
        self._fallback = _chunk_digest_fallback(files, parts_of, parts_in_order)
        offsets = list(map(_OFFSET, parts_in_order))
        # whether some member holds several chunks (then readers fetch them together)
        self.members_shared = not _increasing(offsets)
        if not self.members_shared:  # the blob's order: each member holds one chunk
            self._offsets = array("q", offsets)
            sizes = _check_sequential(files, parts_of, offsets, self._data_end, limits)
        else:
            self._offsets = array("q", sorted(set(offsets)))
            sizes = _BlobLayout(files, parts_of, self, self._data_end, limits).sizes
        # upper bounds over every chunk listed: a layer under a smaller limit checks these
        # instead of every chunk again
        self.largest_plain, self.largest_compressed = sizes.largest_plain, sizes.largest_compressed
        self.several: dict[str, tuple[Chunk, ...]] = {}  # files of more than one chunk
        for f in files:
            if id(f) in parts_of:
                self.several[f.name] = self._made(f, parts_of[id(f)])
            else:  # a later single-chunk entry of the same name replaces a file of several
                self.several.pop(f.name, None)

    def member_end(self, offset: int) -> int:
        """Where the member (or frame) starting at ``offset`` ends: the next one's start."""
        offsets = self._offsets
        at = bisect.bisect_right(offsets, offset)
        return offsets[at] if at < len(offsets) else self._data_end

    def of(self, entry: TOCEntry) -> tuple[Chunk, ...]:
        """The chunks of regular file ``entry`` (an entry the index keeps), in file order."""
        if entry.type != "reg" or entry.size == 0:
            return ()
        several = self.several.get(entry.name)
        if several is not None:
            return several
        digest = entry.digest if self._fallback else entry.chunk_digest
        return (Chunk(entry.name, 0, entry.size, entry.offset, self.member_end(entry.offset),
                      entry.inner_offset, digest),)

    def in_blob_order(self, entries: Iterable[TOCEntry]) -> list[Chunk]:
        """The chunks of the regular files among ``entries`` (each file once), in the order
        they sit in the blob; the Chunks of single-chunk files made in C-level loops."""
        files = [entry for entry in entries if entry.type == "reg" and entry.size]
        several = self.several
        single = [f for f in files if f.name not in several] if several else files
        offsets = list(map(_OFFSET, single))
        members = self._offsets.tolist()
        count = len(offsets)
        if offsets == members[:count]:  # one file a member, in the blob's order (all of them
            # or the first ones): each ends where the next member starts
            ends: Iterable[int] = [*members[1:], self._data_end][:count]
        else:
            starts = [*members, self._data_end]
            ends = map(starts.__getitem__, map(bisect.bisect_right, repeat(members), offsets))
        made = list(map(Chunk, map(_NAME, single), repeat(0), map(_SIZE, single), offsets, ends,
                        map(_INNER_OFFSET, single),
                        map(_DIGEST if self._fallback else _CHUNK_DIGEST, single)))
        if several:
            made += [chunk for f in files if f.name in several for chunk in several[f.name]]
        if several or not _increasing(offsets):
            made.sort(key=_BLOB_ORDER)
        return made

    def _made(self, reg: TOCEntry, parts: list[TOCEntry]) -> tuple[Chunk, ...]:
        return tuple(
            Chunk(reg.name, part.chunk_offset, part.chunk_size or reg.size - part.chunk_offset,
                  part.offset, self.member_end(part.offset), part.inner_offset,
                  reg.digest if self._fallback else part.chunk_digest)
            for part in parts)


def _data_files(entries: Sequence[TOCEntry]) -> tuple[list[TOCEntry], dict[int, list[TOCEntry]]]:
    """Every reg entry in TOC order, and the data entries (reg, then chunk...) of those
    followed by chunk entries, by id of the reg entry."""
    types = list(map(_TYPE, entries))
    files = list(compress(entries, map("reg".__eq__, types)))
    parts_of: dict[int, list[TOCEntry]] = {}
    if "chunk" not in types:
        return files, parts_of
    current: list[TOCEntry] | None = None
    for entry, etype in zip(entries, types, strict=True):
        if etype == "chunk":
            if current is None or entry.name != current[0].name:
                raise TOCError(f"chunk entry {entry.name!r} does not follow its file's reg entry")
            if len(current) == 1:
                parts_of[id(current[0])] = current
            current.append(entry)
        else:
            current = [entry] if etype == "reg" else None
    return files, parts_of


def _check_single_tiling(files: list[TOCEntry], parts_of: dict[int, list[TOCEntry]]) -> None:
    """A file of one chunk: that chunk starts at 0 and covers the whole file."""
    for f in files:
        if (f.chunk_offset or (f.chunk_size and f.chunk_size != f.size)) and id(f) not in parts_of:
            _check_tiling([f])  # raises, saying how the chunk is wrong


def _check_tiling(parts: list[TOCEntry]) -> None:
    """The chunks must cover [0, size) in order, without gaps or overlaps."""
    reg = parts[0]
    size, name = reg.size, reg.name
    if size == 0:
        if len(parts) > 1 or reg.chunk_size or reg.chunk_offset:
            raise TOCError(f"empty file {name!r} has chunks")
        return
    pos = 0
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part.chunk_offset != pos:
            raise TOCError(f"{name!r}: chunk at {part.chunk_offset} where {pos} was expected")
        length = part.chunk_size if part.chunk_size else size - pos
        if length <= 0 or pos + length > size or (last and pos + length != size):
            raise TOCError(f"{name!r}: chunk of {part.chunk_size} at {pos} exceeds size {size}")
        pos += length


def _parts_in_toc_order(files: list[TOCEntry],
                        parts_of: dict[int, list[TOCEntry]]) -> list[TOCEntry]:
    if not parts_of:
        return files
    return [part for f in files for part in parts_of.get(id(f), (f,))]


def _chunk_digest_fallback(files: list[TOCEntry], parts_of: dict[int, list[TOCEntry]],
                           parts: list[TOCEntry]) -> bool:
    """True when chunkDigests may be taken from whole-file digests (old single-chunk TOCs)."""
    if all(map(_CHUNK_DIGEST, parts)):
        return False
    if parts_of or not all(f.digest for f in files):
        raise TOCError("some chunks have no chunkDigest, so they can not be verified")
    return True


def _increasing(values: list[int]) -> bool:
    return all(map(operator.lt, values, islice(values, 1, None)))


def _check_sequential(files: list[TOCEntry], parts_of: dict[int, list[TOCEntry]],
                      offsets: list[int], data_end: int, limits: LimitsConfig) -> _SizeCheck:
    """The limits, for chunks in the blob's order, one to a member: the members must start
    before the data ends, and hold what limits.max_chunk_bytes allows (twice that
    compressed)."""
    sizes = _SizeCheck(limits.max_chunk_bytes)
    if not offsets:
        return sizes
    if offsets[-1] >= data_end:
        last = files[-1]
        raise TOCError(f"{last.name!r}: offset {offsets[-1]} is past the data end {data_end}")
    ends = [*islice(offsets, 1, None), data_end]
    biggest = limits.max_chunk_bytes
    if parts_of:
        parts = [(part, f.size) for f in files for part in parts_of.get(id(f), (f,))]
        extents = [part.inner_offset + _length(part, size) for part, size in parts]
    else:  # one chunk a file, covering it (its tiling is checked)
        parts = []
        extents = list(map(operator.add, map(_INNER_OFFSET, files), map(_SIZE, files)))
    sizes.largest_compressed = max(map(operator.sub, ends, offsets))
    sizes.largest_plain = max(extents)
    if sizes.largest_compressed > 2 * biggest or sizes.largest_plain > biggest:
        placed = parts or [(f, f.size) for f in files]
        for (part, _), extent, offset, end in zip(placed, extents, offsets, ends, strict=True):
            sizes.check(part, offset, extent, end)
    return sizes


def _length(part: TOCEntry, file_size: int) -> int:
    return part.chunk_size or file_size - part.chunk_offset


class _SizeCheck:
    def __init__(self, biggest: int) -> None:
        self._max = biggest
        self.largest_plain = 0  # of the chunks checked, or set by the caller for all of them
        self.largest_compressed = 0

    def check(self, part: TOCEntry, offset: int, extent: int, member_end: int) -> None:
        self.largest_plain = max(self.largest_plain, extent)
        self.largest_compressed = max(self.largest_compressed, member_end - offset)
        if extent > self._max:
            raise TOCError(
                f"{part.name!r}: the chunk at {part.chunk_offset} needs {extent} decompressed "
                f"bytes, more than the limit of {self._max} (limits.max_chunk_bytes)")
        compressed = member_end - offset
        if compressed > 2 * self._max:
            raise TOCError(
                f"{part.name!r}: the chunk at {part.chunk_offset} is in {compressed} compressed "
                f"bytes, more than the limit of {2 * self._max} (2 x limits.max_chunk_bytes)")


_Placed = tuple[int, int, int, int]  # offset, inner offset, file number, part number


class _BlobLayout:
    """Where the chunks sit in the blob, checked in blob order: each (member, inner offset)
    used once, chunks sharing a member do not overlap, each member's decompressed extent and
    compressed size are within limits.max_chunk_bytes (and twice that), and a file's chunks
    lie one after another, in file order, as every writer lays them out."""

    def __init__(self, files: list[TOCEntry], parts_of: dict[int, list[TOCEntry]],
                 table: ChunkTable, data_end: int, limits: LimitsConfig) -> None:
        self._files = files
        self._parts = [parts_of.get(id(f)) or [f] for f in files]
        self._table = table
        self._data_end = data_end
        self.sizes = _SizeCheck(limits.max_chunk_bytes)
        self._check(self._in_blob_order())

    def _in_toc_order(self) -> Iterator[_Placed]:
        for fi, parts in enumerate(self._parts):
            for pi, part in enumerate(parts):
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
        all_parts = self._parts
        previous: _Placed = (-1, -1, -1, -1)
        inner_end = 0  # where the previous chunk in the same member ends
        for offset, inner, fi, pi in placed:
            reg = self._files[fi]
            name = reg.name
            if offset >= self._data_end:
                raise TOCError(f"{name!r}: offset {offset} is past the data end {self._data_end}")
            if offset == previous[0] and inner < inner_end:
                raise TOCError(f"{name!r}: offset {offset} is used by two chunks")
            follows = fi == previous[2] and pi == previous[3] + 1
            starts = pi == 0 and (
                previous[2] < 0 or previous[3] == len(all_parts[previous[2]]) - 1)
            if not (follows or starts):
                raise TOCError(f"{name!r}: its chunks are not laid out in order in the blob")
            part = all_parts[fi][pi]
            inner_end = inner + _length(part, reg.size)
            self.sizes.check(part, offset, inner_end, self._table.member_end(offset))
            previous = (offset, inner, fi, pi)

