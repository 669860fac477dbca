"""Opening a blob: footer + TOC first, file bytes only once the TOC is trusted.

``open_blob`` gives an UnverifiedBlob, which has no way to read file data. Only
``verify(expected_toc_digest)`` or an explicit, logged ``skip_verification(reason)``
turns it into a VerifiedBlob, and a VerifiedBlob checks every chunk's digest before
it hands out a single byte.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress
from operator import attrgetter

from stargz.config import LimitsConfig
from stargz.errors import (
    ChunkDigestMismatch,
    DecompressionError,
    FormatError,
    NotFoundError,
    StargzError,
    TOCDigestMismatch,
    TOCError,
)
from stargz.estargz.chunks import Chunk
from stargz.estargz.compression import (
    Compression,
    GzipMemberReader,
    decompress_prefix,
    decompress_upto,
)
from stargz.estargz.footer import SKIPPABLE_FRAME_MAGIC, Footer, external_footer, parse_footer
from stargz.estargz.source import RangeSource
from stargz.estargz.tarstream import BLOCK, parse_number
from stargz.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
    TOCJSON,
    TOCEntry,
    clean_name,
    parse_toc,
)
from stargz.estargz.tocindex import TOCIndex

log = logging.getLogger(__name__)

# The first read of a blob's end: the footer, and the TOC when it is small. A bigger TOC's start
# is read next, exactly (as the reference reads the footer, then the TOC): a generous first read
# brought chunk data before the TOC that a workload may never read (python3 image: ~60 kB).
TAIL_READ = 64 << 10
# After the TOC JSON: its padding and the tar's end (tar writers pad to 10 KiB records).
_TAR_TRAILER = 64 << 10
_ENTRY_OFFSET = attrgetter("offset")


def open_blob(source: RangeSource, limits: LimitsConfig | None = None) -> UnverifiedBlob:
    """Read the footer and TOC of a blob; structural validation only, within ``limits``
    (default: LimitsConfig()): a TOC beyond them is a TOCError."""
    limits = limits or LimitsConfig()
    footer, toc_json = _toc_reader(source, limits.max_toc_bytes)
    return _parsed(source, footer, toc_json, limits)


def read_toc_json(source: RangeSource, limits: LimitsConfig | None = None) -> bytes:
    """The TOC's JSON as the blob holds it, neither parsed nor checked against a digest."""
    return _toc_reader(source, (limits or LimitsConfig()).max_toc_bytes)[1]()


def _toc_reader(source: RangeSource, max_toc: int) -> tuple[Footer, Callable[[], bytes]]:
    """The footer, and what decompresses the TOC's JSON (again if asked again): the
    compressed TOC is read once."""
    size = source.size
    tail_len = min(size, TAIL_READ)
    tail = source.read_at(size - tail_len, tail_len)
    footer = parse_footer(tail)
    start, end = footer.toc_range(size)
    if end - start > max_toc:
        raise TOCError(f"TOC is {end - start} bytes compressed, more than the limit of "
                       f"{max_toc} (limits.max_toc_bytes)")
    tail_start = size - tail_len
    if start >= tail_start:
        compressed = tail[start - tail_start : end - tail_start]
    else:
        compressed = source.read_at(start, end - start)
    if footer.kind == "zstd-chunked":
        _check_skippable_header(source, footer, tail, tail_start)
    del tail

    def toc_json() -> bytes:
        if footer.kind == "zstd-chunked":
            return _zstd_toc_json(compressed, footer, max_toc)
        return _gzip_toc_json(compressed, max_toc)

    return footer, toc_json


def open_blob_external(source: RangeSource, toc_blob: bytes,
                       limits: LimitsConfig | None = None) -> UnverifiedBlob:
    """A blob whose footer says its TOC is kept outside it, with that TOC: ``toc_blob`` is
    the gzip'd tar holding ``stargz.index.json``, as the reference's TOC image stores it.
    Only the TOC digest proves the two belong together, as for any TOC."""
    limits = limits or LimitsConfig()
    footer = external_footer(source.size)
    max_toc = limits.max_toc_bytes
    if len(toc_blob) > max_toc:
        raise TOCError(f"TOC is {len(toc_blob)} bytes compressed, more than the limit of "
                       f"{max_toc} (limits.max_toc_bytes)")
    return _parsed(source, footer, lambda: _gzip_toc_json(toc_blob, max_toc), limits)


def _parsed(source: RangeSource, footer: Footer, toc_json: Callable[[], bytes],
            limits: LimitsConfig) -> UnverifiedBlob:
    """The TOC decompressed, digested and parsed; its JSON is let go of once decoded (and
    made again from the compressed TOC if it is asked for)."""
    data = toc_json()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    handed = TOCJSON(data, toc_json)
    del data
    toc = parse_toc(handed, footer.data_end, limits)
    return UnverifiedBlob(source, footer, toc, digest, toc_json)


def _gzip_toc_json(compressed: bytes, max_toc: int) -> bytes:
    """The JSON of the TOC's tar entry, decompressed piece by piece: never more than the
    header says (and the limit allows), and never copied."""
    member = GzipMemberReader(compressed)
    try:
        header = member.read(BLOCK)
        if len(header) < BLOCK:
            raise TOCError("TOC member is too short to hold a tar header")
        length = _toc_tar_length(header)
        if length > max_toc:
            raise TOCError(f"TOC is {length} bytes, more than the limit of {max_toc} "
                           f"(limits.max_toc_bytes)")
        toc_json = member.read(length)
        if len(toc_json) < length:
            raise TOCError(f"TOC tar entry claims {length} bytes but the member holds fewer")
        member.read(_TAR_TRAILER)
        if not member.at_end:
            raise TOCError("TOC member holds more than the TOC and the tar's end")
    except DecompressionError as err:
        raise TOCError(f"TOC member: {err}") from None
    return toc_json


def _toc_tar_length(header: bytes) -> int:
    name = header[:100].split(b"\x00", 1)[0]
    if name != TOC_TAR_NAME.encode():
        raise TOCError(f"TOC tar entry is named {name[:100]!r}, not {TOC_TAR_NAME!r}")
    try:
        length = parse_number(header[124:136])
    except Exception:
        raise TOCError("TOC tar header has a malformed size") from None
    if length < 0:
        raise TOCError(f"TOC tar header claims {length} bytes")
    return length


def _check_skippable_header(
    source: RangeSource, footer: Footer, tail: bytes, tail_start: int
) -> None:
    at = footer.toc_offset - 8
    if at >= tail_start:
        header = tail[at - tail_start : at - tail_start + 8]
    else:
        header = source.read_at(at, 8)
    length = int.from_bytes(header[4:], "little")
    if header[:4] != SKIPPABLE_FRAME_MAGIC or length != footer.toc_length:
        raise TOCError("zstd:chunked TOC is not in a skippable frame of the length the footer says")


def _zstd_toc_json(compressed: bytes, footer: Footer, max_toc: int) -> bytes:
    want = footer.toc_uncompressed_length
    if want > max_toc:
        raise TOCError(f"zstd:chunked TOC is {want} bytes, more than the limit of {max_toc} "
                       f"(limits.max_toc_bytes)")
    if want <= 0:
        raise TOCError(f"zstd:chunked footer claims a {want}-byte TOC")
    try:
        data = decompress_upto("zstd-chunked", compressed, want + 1)
    except DecompressionError as err:
        raise TOCError(f"zstd:chunked TOC: {err}") from None
    if len(data) != want:
        raise TOCError(f"zstd:chunked TOC is {len(data)} bytes, the footer says {want}")
    return data


class UnverifiedBlob:
    """A blob whose TOC has been parsed but not yet matched against a trusted digest."""

    def __init__(self, source: RangeSource, footer: Footer, toc: TOC, toc_digest: str,
                 toc_json: Callable[[], bytes]) -> None:
        self._source = source
        self.footer = footer
        self.toc = toc
        self.toc_digest = toc_digest
        self._toc_json = toc_json

    @property
    def toc_json(self) -> bytes:
        """The TOC's JSON, as the blob holds it (decompressed again: not kept)."""
        return self._toc_json()

    def verify(self, expected_toc_digest: str) -> VerifiedBlob:
        if expected_toc_digest != self.toc_digest:
            raise TOCDigestMismatch(
                f"TOC digest is {self.toc_digest}, but {expected_toc_digest} was expected"
            )
        return VerifiedBlob(self._source, self.footer, self.toc, self.toc_digest)

    def skip_verification(self, reason: str) -> VerifiedBlob:
        log.warning(
            "NOT verifying TOC %s against a trusted digest: %s", self.toc_digest, reason
        )
        return VerifiedBlob(self._source, self.footer, self.toc, self.toc_digest)


class VerifiedBlob:
    """A blob with a trusted TOC: lookups, and file bytes checked chunk by chunk."""

    def __init__(self, source: RangeSource, footer: Footer, toc: TOC, toc_digest: str) -> None:
        self.source = source
        self.footer = footer
        self.toc = toc
        self.toc_digest = toc_digest
        self._index = toc.index or TOCIndex(toc.entries, footer.data_end)
        self.compression: Compression = "zstd-chunked" if footer.kind == "zstd-chunked" else "gzip"

    def lookup(self, path: str) -> TOCEntry | None:
        """The entry at ``path``; a hardlink gives its target's entry (the same object)."""
        return self._index.lookup(clean_name(path))

    def lookup_name(self, name: str) -> TOCEntry | None:
        """``lookup`` of a name already clean (root-relative, no "." or ".." part): for a
        filesystem joining a directory's name and a child's."""
        return self._index.lookup(name)

    def listdir(self, path: str) -> dict[str, TOCEntry]:
        entry = self.lookup(path)
        if entry is None or entry.type != "dir":
            raise NotFoundError(f"{path!r} is not a directory in this layer")
        return self._index.listdir(entry.name)

    def walk(self) -> Iterator[TOCEntry]:
        """Every path once, parents first; hardlinks come out as ``hardlink`` entries."""
        return self._index.walk()

    def nlink(self, entry: TOCEntry) -> int:
        return self._index.nlink(entry)

    @property
    def entry_count(self) -> int:
        """How many paths the layer holds (numbered 0, the root, to entry_count - 1)."""
        return len(self._index)

    def number_of(self, entry: TOCEntry) -> int:
        """The number of an entry that lookup, listdir or walk gave (stable: the TOC never
        changes)."""
        return self._index.number_of(entry)

    def entry_at(self, number: int) -> TOCEntry | None:
        return self._index.entry_at(number)

    def is_implied(self, entry: TOCEntry) -> bool:
        """Whether ``entry`` is a directory the TOC only implies (no entry lists it)."""
        return entry.name in self._index.implied

    def chunks(self, path: str) -> list[Chunk]:
        return list(self._index.chunks_of(self._regular(path)))

    def chunk_at(self, path: str, offset: int) -> Chunk:
        entry = self._regular(path)
        chunks = self._index.chunks_of(entry)
        i = bisect.bisect_right(chunks, offset, key=_chunk_start) - 1
        if offset < 0 or i < 0 or offset >= chunks[i].end:
            raise NotFoundError(f"{path!r} has no byte at offset {offset} (size {entry.size})")
        return chunks[i]

    def decode_chunk(self, chunk: Chunk, member: bytes) -> bytes:
        """Decompress a chunk from its compressed bytes and check its digest."""
        result = self.decode_member([chunk], member)[0]
        if isinstance(result, StargzError):
            raise result
        return result

    def decode_member(
        self, chunks: Sequence[Chunk], member: bytes
    ) -> list[bytes | StargzError]:
        """Decode the chunks that share one member (or frame) from its compressed bytes:
        the member is decompressed once, as far as the last chunk needs (within
        limits.max_chunk_bytes, checked when the TOC was opened), and each chunk is checked
        against its digest. One result per chunk: its bytes, or why they are refused."""
        first = chunks[0]
        if len(member) != first.compressed_size:
            raise FormatError(
                f"{first.path!r}: got {len(member)} compressed bytes, want {first.compressed_size}"
            )
        need = max(c.inner_offset + c.chunk_size for c in chunks)
        try:
            plain = decompress_prefix(self.compression, member, need)
        except FormatError as err:  # a damaged member: say which file and where
            failed = type(err)(f"{first.path!r} chunk at {first.chunk_offset}: {err}")
            return [failed for _ in chunks]
        return [_checked(chunk, plain) for chunk in chunks]

    def chunks_in_blob_order(self, before: int | None = None) -> list[Chunk]:
        """Every chunk of every regular file once, in the order they sit in the blob (only
        files the TOC keeps: a later entry of the same name wins); with ``before``, only the
        chunks whose member starts before that offset."""
        entries: Iterable[TOCEntry] = self._index.entries.values()
        if before is None:
            return self._index.chunks.in_blob_order(entries)
        if before <= 0:
            return []
        # a file's chunks lie in file order in the blob (checked): a file whose first chunk
        # starts past ``before`` has none before it
        entries = compress(entries, map(before.__gt__, map(_ENTRY_OFFSET, entries)))
        chunks = self._index.chunks.in_blob_order(entries)
        return [chunk for chunk in chunks if chunk.compressed_offset < before]

    def largest_chunk(self) -> tuple[int, int]:
        """Upper bounds over every chunk listed: the decompressed bytes one needs from its
        member's start (inner offset + size), and the compressed bytes of its member."""
        table = self._index.chunks
        return table.largest_plain, table.largest_compressed

    @property
    def members_shared(self) -> bool:
        """Whether some member (or frame) holds several chunks."""
        return self._index.chunks.members_shared

    def verified_chunks(self) -> Iterator[tuple[Chunk, bytes]]:
        """Every chunk of every regular file with its verified bytes, in blob order (a file's
        chunks one after another, in file order): each member is read and decompressed once,
        and at most one member's chunks are held. Raises at the first chunk that fails."""
        chunks = self.chunks_in_blob_order()
        start = 0
        while start < len(chunks):
            first = chunks[start]
            end = start + 1
            while end < len(chunks) and chunks[end].compressed_offset == first.compressed_offset:
                end += 1
            siblings = chunks[start:end]
            member = self.source.read_at(first.compressed_offset, first.compressed_size)
            for chunk, result in zip(siblings, self.decode_member(siblings, member), strict=True):
                if isinstance(result, StargzError):
                    raise result
                yield chunk, result
            start = end

    def read_chunk(self, chunk: Chunk) -> bytes:
        """Fetch a chunk's compressed bytes from the source and decode them (verified)."""
        member = self.source.read_at(chunk.compressed_offset, chunk.compressed_size)
        return self.decode_chunk(chunk, member)

    def read_file(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular file from ``offset`` (short only at end of file)."""
        entry = self._regular(path)
        if offset < 0 or size < 0:
            raise FormatError(f"invalid read of {size} bytes at {offset} in {path!r}")
        end = min(entry.size, offset + size)
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            chunk = self.chunk_at(entry.name, pos)
            data = self.read_chunk(chunk)
            parts.append(data[pos - chunk.chunk_offset : end - chunk.chunk_offset])
            pos = chunk.end
        return b"".join(parts)

    def prefetch_end(self) -> int | None:
        """Blob offset up to which a runtime should prefetch (0: nothing; None: no landmark)."""
        landmark = self._index.entries.get(PREFETCH_LANDMARK)
        if landmark is not None and landmark.type == "reg":
            return landmark.offset
        if NO_PREFETCH_LANDMARK in self._index.entries:
            return 0
        return None

    def _regular(self, path: str) -> TOCEntry:
        entry = self.lookup(path)
        if entry is None:
            raise NotFoundError(f"no such file {path!r} in this layer")
        if entry.type != "reg":
            raise NotFoundError(f"{path!r} is a {entry.type}, not a regular file")
        return entry




def _chunk_start(chunk: Chunk) -> int:
    return chunk.chunk_offset


def _checked(chunk: Chunk, plain: bytes) -> bytes | StargzError:
    data = plain[chunk.inner_offset : chunk.inner_offset + chunk.chunk_size]
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != chunk.digest:
        return ChunkDigestMismatch(
            f"{chunk.path!r} chunk at {chunk.chunk_offset}: digest {got} is not {chunk.digest}"
        )
    return data
