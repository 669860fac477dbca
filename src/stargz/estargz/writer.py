"""Building eStargz / zstd:chunked blobs from a tar stream.

The decompressed tar is laid out as the reference does: a new member at the first
payload byte of every non-empty regular file and at every chunk boundary, headers at
the end of the previous member, the TOC in its own member, then the footer. Entry
headers are copied through unchanged (PAX, GNU and USTAR alike), so the blob still
extracts as the original tar with a landmark and the TOC added.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from stargz.config import LimitsConfig
from stargz.errors import BuildError
from stargz.estargz.compression import Compression, compress
from stargz.estargz.footer import (
    SKIPPABLE_FRAME_MAGIC,
    estargz_footer,
    external_toc_footer,
    zstd_chunked_footer,
)
from stargz.estargz.layout import MemberLayout, MemberOutput
from stargz.estargz.prioritize import SpooledEntry, prioritize
from stargz.estargz.tarinput import TarInput, pread_exact
from stargz.estargz.tarstream import EOF_BLOCKS, TarMember, TarReader, padded, ustar_header
from stargz.estargz.toc import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
    TOCEntry,
    clean_name,
)

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
ZSTD_MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"
# A member packing small files is closed past this many uncompressed bytes, so reading
# one small file never means inflating an unbounded member.
_PACKED_MEMBER_LIMIT = 1 << 20
_DROPPED_NAMES = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})


@dataclass(frozen=True)
class BuildOptions:
    chunk_size: int = 4 << 20
    level: int = 9
    min_chunk_size: int = 0
    prioritized: Sequence[str] = ()
    allow_missing_prioritized: bool = False
    compression: Compression = "gzip"
    workers: int | None = field(default_factory=os.cpu_count)
    # The reference's --estargz-external-toc: the TOC goes to BuildResult.external_toc (for a
    # separate TOC image), the blob ends with the 46-byte external-TOC footer.
    external_toc: bool = False
    # --estargz-keep-diff-id: the tar's bytes unchanged (no landmark, no reordering), so the
    # diff_id stays the source's; needs external_toc (a TOC inside would change it).
    keep_diff_id: bool = False

    def check(self) -> None:
        if self.chunk_size <= 0:
            raise BuildError(f"chunk size must be positive, not {self.chunk_size}")
        # A member may hold a chunk and packed files after it (up to 2 chunks' worth): keep
        # it within what readers accept by default, or the layer could not be mounted.
        if self.chunk_size > LimitsConfig().max_chunk_bytes // 2:
            raise BuildError(f"chunk size {self.chunk_size} is more than readers accept "
                             f"({LimitsConfig().max_chunk_bytes // 2}: limits.max_chunk_bytes/2)")
        if self.min_chunk_size < 0:
            raise BuildError(f"min chunk size must not be negative, not {self.min_chunk_size}")
        if self.compression not in ("gzip", "zstd-chunked"):
            raise BuildError(f"unknown compression {self.compression!r}")
        low, high = (0, 9) if self.compression == "gzip" else (-7, 22)
        if not low <= self.level <= high:
            raise BuildError(f"{self.compression} level {self.level} is not in {low}..{high}")
        if self.external_toc and self.compression != "gzip":
            raise BuildError("an external TOC is only written for eStargz (gzip) layers")
        if self.keep_diff_id and not self.external_toc:
            raise BuildError("keeping the diff ID needs the TOC kept outside (external TOC)")
        if self.keep_diff_id and self.prioritized:
            raise BuildError("keeping the diff ID leaves entries in order: no prioritized files")


@dataclass(frozen=True)
class BuildResult:
    toc_digest: str
    diff_id: str
    blob_digest: str
    blob_size: int
    uncompressed_size: int
    compression: Compression
    toc_offset: int
    missing_prioritized: tuple[str, ...] = ()
    # zstd:chunked only: the compressed TOC's digest, length and uncompressed length
    manifest_checksum: str = ""
    manifest_size: int = 0
    manifest_uncompressed_size: int = 0
    external_toc: bytes = b""  # external_toc only: the TOC as a gzip'd tar, for the TOC image

    def annotations(self) -> dict[str, str]:
        """Layer descriptor annotations a runtime needs for lazy pulling."""
        out = {
            TOC_DIGEST_ANNOTATION: self.toc_digest,
            UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }
        if self.compression == "zstd-chunked":
            out[ZSTD_MANIFEST_CHECKSUM_ANNOTATION] = self.manifest_checksum
            out[ZSTD_MANIFEST_POSITION_ANNOTATION] = (
                f"{self.toc_offset}:{self.manifest_size}:{self.manifest_uncompressed_size}:1"
            )
        return out


@dataclass
class _Record:
    """A TOC entry in the making: its blob offset is known only once its member is written."""

    fields: dict[str, Any]
    member: int | None = None


PayloadReader = Callable[[int], bytes]


class _Builder:
    def __init__(self, layout: MemberLayout, options: BuildOptions) -> None:
        self._layout = layout
        self._opts = options
        self.records: list[_Record] = []
        self._user_names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}

    def add(self, member: TarMember, read: PayloadReader) -> None:
        fields = self._entry_fields(member)
        self._layout.add(member.raw_header)
        if member.type == "reg" and member.size > 0:
            self._add_payload(member, fields, read)
        else:
            if member.type == "reg":
                fields["digest"] = "sha256:" + hashlib.sha256(b"").hexdigest()
            self.records.append(_Record(fields))

    def _entry_fields(self, m: TarMember) -> dict[str, Any]:
        fields: dict[str, Any] = dict(
            name=m.name, type=m.type, modtime=max(0, m.modtime), mode=m.mode, uid=m.uid,
            gid=m.gid, user_name=_name_if_changed(self._user_names, m.uid, m.user_name),
            group_name=_name_if_changed(self._group_names, m.gid, m.group_name),
            xattrs=m.xattrs,
        )
        if m.type in ("hardlink", "symlink"):
            fields["link_name"] = m.link_name
        elif m.type == "reg":
            fields["size"] = m.size
        elif m.type in ("char", "block"):
            fields["dev_major"], fields["dev_minor"] = m.dev_major, m.dev_minor
        return fields

    def _packable(self, member: TarMember) -> bool:
        opts = self._opts
        return (
            0 < member.size < opts.min_chunk_size
            and member.size <= opts.chunk_size
            and self._layout.open_size < max(opts.chunk_size, _PACKED_MEMBER_LIMIT)
            and clean_name(member.name) not in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
        )

    def _add_payload(self, member: TarMember, fields: dict[str, Any], read: PayloadReader) -> None:
        layout = self._layout
        if self._packable(member):
            record = _Record(fields, layout.closed_members)
            fields["inner_offset"] = layout.open_size
            data = _read_exact(read, member.size, member.name)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            fields["digest"] = fields["chunk_digest"] = digest
            layout.add(data)
            self.records.append(record)
        else:
            fields["digest"] = self._add_chunks(member, fields, read)
        layout.add(b"\x00" * (member.padded_size - member.size))

    def _add_chunks(self, member: TarMember, fields: dict[str, Any], read: PayloadReader) -> str:
        """Write a file's payload, one member per chunk; return the whole file's digest."""
        chunk_size = self._opts.chunk_size
        whole = hashlib.sha256() if member.size > chunk_size else None
        written = 0
        while written < member.size:
            length = min(chunk_size, member.size - written)
            if length == chunk_size:
                fields["chunk_size"] = chunk_size  # the reference omits it only on a short tail
            fields["chunk_offset"] = written
            data = _read_exact(read, length, member.name)
            fields["chunk_digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
            if whole is not None:
                whole.update(data)
            self.records.append(_Record(fields, self._layout.new_member()))
            self._layout.add(data)
            written += length
            fields = {"name": member.name, "type": "chunk"}
        first = self.records[-((member.size + chunk_size - 1) // chunk_size)]
        return "sha256:" + whole.hexdigest() if whole else first.fields["chunk_digest"]


def _name_if_changed(names: dict[int, str], owner_id: int, name: str) -> str:
    # The reference writes an owner name only when it differs from the last one for the id.
    if not name or names.get(owner_id) == name:
        return ""
    names[owner_id] = name
    return name


def _read_exact(read: PayloadReader, n: int, name: str) -> bytes:
    data = read(n)
    if len(data) != n:
        raise BuildError(f"tar stream is truncated inside the payload of {name!r}")
    return data


def _landmark(name: str) -> tuple[TarMember, PayloadReader]:
    member = TarMember(ustar_header(name, len(LANDMARK_CONTENTS)), name, "reg", 1)
    return member, lambda n: LANDMARK_CONTENTS[:n]


def _dropped(member: TarMember) -> bool:
    return clean_name(member.name) in _DROPPED_NAMES


def _streamed(tar: TarInput) -> Iterator[tuple[TarMember, PayloadReader]]:
    """One pass over the tar: entries in their original order."""
    yield _landmark(NO_PREFETCH_LANDMARK)
    reader = TarReader(tar.read)
    while (member := reader.next_member()) is not None:
        if not _dropped(member):
            yield member, tar.read
        remaining = member.padded_size if _dropped(member) else member.padded_size - member.size
        _skip(tar, remaining)


def _skip(tar: TarInput, n: int) -> None:
    while n > 0:
        piece = tar.read(min(n, 4 << 20))
        if not piece:
            raise BuildError("tar stream is truncated inside a payload")
        n -= len(piece)


def _spooled(
    spool: BinaryIO, options: BuildOptions, missing: list[str]
) -> Iterator[tuple[TarMember, PayloadReader]]:
    """Entries reordered: prioritized ones, then the landmark, then the rest."""
    entries: list[SpooledEntry] = []
    reader = TarReader(spool.read)
    while (member := reader.next_member()) is not None:
        data_offset = spool.tell()
        if data_offset + member.size > os.fstat(spool.fileno()).st_size:
            raise BuildError(f"tar stream is truncated inside the payload of {member.name!r}")
        spool.seek(member.padded_size, os.SEEK_CUR)
        if not _dropped(member):
            entries.append(SpooledEntry(member, data_offset))
    first, missed, rest = prioritize(
        entries, options.prioritized, options.allow_missing_prioritized
    )
    missing.extend(missed)
    fd = spool.fileno()
    for entry in first:
        yield entry.member, _pread_reader(fd, entry.data_offset)
    yield _landmark(PREFETCH_LANDMARK)
    for entry in rest:
        yield entry.member, _pread_reader(fd, entry.data_offset)


def _pread_reader(fd: int, offset: int) -> PayloadReader:
    position = offset

    def read(n: int) -> bytes:
        nonlocal position
        data = pread_exact(fd, n, position)
        position += n
        return data

    return read


def build(src: BinaryIO, dst: BinaryIO, options: BuildOptions | None = None) -> BuildResult:
    """Convert the tar stream ``src`` (plain, gzip or zstd) into a blob written to ``dst``."""
    opts = options or BuildOptions()
    opts.check()
    start = _file_position(src)
    tar = TarInput(src)
    output = MemberOutput(dst, opts.compression, opts.level, opts.workers or os.cpu_count() or 1)
    try:
        layout = MemberLayout(output)
        builder = _Builder(layout, opts)
        missing: list[str] = []
        if opts.keep_diff_id:
            _add_lossless(tar, builder, layout)
        elif opts.prioritized:
            with _random_access(src, start, tar) as spool:
                for member, read in _spooled(spool, opts, missing):
                    builder.add(member, read)
        else:
            for member, read in _streamed(tar):
                builder.add(member, read)
        return _finish(output, layout, builder.records, opts, tuple(missing))
    finally:
        output.close()


def _add_lossless(tar: TarInput, builder: _Builder, layout: MemberLayout) -> None:
    """Every entry in order and the tar's end as it is: the layout's bytes are the source's,
    or BuildError (a global PAX header or non-zero padding would change them)."""
    source = hashlib.sha256()
    consumed = 0

    def read(n: int) -> bytes:
        nonlocal consumed
        data = tar.read(n)
        source.update(data)
        consumed += len(data)
        return data

    reader = TarReader(read)
    while (member := reader.next_member()) is not None:
        builder.add(member, read)
        _skip_with(read, member.padded_size - member.size)
    ended = consumed - layout.uncompressed_size  # the end-of-archive block the reader took
    layout.add(b"\x00" * max(0, ended))
    while piece := read(4 << 20):
        layout.add(piece)
    if layout.diff_hash.digest() != source.digest():
        raise BuildError("this layer can not be converted without changing its diff ID "
                         "(global PAX headers or non-zero padding)")


def _skip_with(read: PayloadReader, n: int) -> None:
    while n > 0:
        piece = read(min(n, 4 << 20))
        if not piece:
            raise BuildError("tar stream is truncated inside a payload")
        n -= len(piece)


def _file_position(src: BinaryIO) -> int | None:
    """Where a plain file ``src`` is positioned, or None when it is not a seekable file."""
    try:
        src.fileno()
        return src.tell() if src.seekable() else None
    except (OSError, AttributeError, ValueError):
        return None


def _random_access(
    src: BinaryIO, start: int | None, tar: TarInput
) -> contextlib.AbstractContextManager[BinaryIO]:
    """The plain tar with random access: ``src`` itself if it is a plain file, else a spool."""
    if tar.compression == "plain" and start is not None:
        src.seek(start)
        return contextlib.nullcontext(src)
    return tar.spool()


def _toc_of(records: list[_Record], offsets: list[int]) -> TOC:
    entries = []
    for record in records:
        if record.member is not None:
            record.fields["offset"] = offsets[record.member]
        entries.append(TOCEntry(**record.fields))
    return TOC(1, entries)


def _finish(
    output: MemberOutput, layout: MemberLayout, records: list[_Record],
    opts: BuildOptions, missing: tuple[str, ...],
) -> BuildResult:
    zstd = opts.compression == "zstd-chunked"
    if zstd:  # zstd:chunked keeps the tar end in a frame of its own, outside the TOC
        layout.new_member()
        layout.add(EOF_BLOCKS)
    layout.new_member()
    output.drain()
    toc_json = _toc_of(records, output.member_offsets).to_json()
    toc_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    common: dict[str, Any] = dict(compression=opts.compression, missing_prioritized=missing)
    if zstd:
        compressed = compress("zstd-chunked", toc_json, opts.level)
        output.write_raw(SKIPPABLE_FRAME_MAGIC + len(compressed).to_bytes(4, "little"))
        toc_offset = output.position
        output.write_raw(compressed)
        output.write_raw(zstd_chunked_footer(toc_offset, len(compressed), len(toc_json)))
        common.update(
            manifest_checksum="sha256:" + hashlib.sha256(compressed).hexdigest(),
            manifest_size=len(compressed), manifest_uncompressed_size=len(toc_json),
        )
    else:
        toc_offset = output.position
        toc_tar = ustar_header(TOC_TAR_NAME, len(toc_json)) + toc_json
        toc_tar += b"\x00" * (padded(len(toc_json)) - len(toc_json)) + EOF_BLOCKS
        if opts.external_toc:  # the TOC is not part of the layer, nor of its diff_id
            common["external_toc"] = compress("gzip", toc_tar, opts.level)
            output.write_raw(external_toc_footer())
            return _result(output, layout, toc_digest, toc_offset, common)
        layout.diff_hash.update(toc_tar)
        layout.uncompressed_size += len(toc_tar)
        output.write_raw(compress("gzip", toc_tar, opts.level))
        output.write_raw(estargz_footer(toc_offset))
    return _result(output, layout, toc_digest, toc_offset, common)


def _result(output: MemberOutput, layout: MemberLayout, toc_digest: str, toc_offset: int,
            common: dict[str, Any]) -> BuildResult:
    return BuildResult(
        toc_digest=toc_digest,
        diff_id="sha256:" + layout.diff_hash.hexdigest(),
        blob_digest="sha256:" + output.blob_hash.hexdigest(),
        blob_size=output.position,
        uncompressed_size=layout.uncompressed_size,
        toc_offset=toc_offset,
        **common,
    )
