"""TOC JSON to TOCEntry objects, for hostile input at a bounded cost.

msgspec decodes and type-checks the JSON in C (types, integer ranges, entry types) into
compact records; one pass in Python then cleans names, checks digests, paths and NULs and
fills omitted owner names. Every problem is one TOCError with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Literal

import msgspec

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.toc import MODE_BITS, NO_XATTRS, TOCEntry, clean_name

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_UInt = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_EntryType = Literal["dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"]
_MODTIME_CACHE = 4096  # distinct modtime strings remembered (most entries share a few)


class _RawEntry(msgspec.Struct, rename="camel", gc=False):
    """One entry as the JSON has it (null accepted wherever a value may be omitted)."""

    name: str | None = None
    type: _EntryType | None = None
    size: _UInt | None = None
    modtime: str | None = None
    link_name: str | None = None
    mode: _UInt | None = None
    uid: _UInt | None = None
    gid: _UInt | None = None
    user_name: str | None = None
    group_name: str | None = None
    offset: _UInt | None = None
    inner_offset: _UInt | None = None
    dev_major: _UInt | None = None
    dev_minor: _UInt | None = None
    xattrs: dict[str, str] | None = None
    digest: str | None = None
    chunk_offset: _UInt | None = None
    chunk_size: _UInt | None = None
    chunk_digest: str | None = None


class _RawTOC(msgspec.Struct, gc=False):
    version: _UInt | None = None
    entries: list[_RawEntry] | None = None


_DECODER = msgspec.json.Decoder(_RawTOC)
_FREED = _RawEntry()


def parse_entries(raw: bytes, limits: LimitsConfig) -> tuple[int, list[TOCEntry]]:
    """The TOC's version and its entries, checked one by one (not yet against each other)."""
    # Decoding makes an object per JSON object: count them first (each entry is one, its
    # xattrs a second), so millions of tiny entries are refused before they cost gigabytes.
    if raw.count(b"{") > 2 * limits.max_toc_entries + 1:
        raise TOCError(f"TOC holds more than {limits.max_toc_entries} entries "
                       f"(limits.max_toc_entries)")
    try:
        doc = _DECODER.decode(raw)
    except msgspec.ValidationError as err:
        raise TOCError(f"TOC is not valid: {_one_line(err)}") from None
    except (msgspec.DecodeError, RecursionError) as err:
        raise TOCError(f"TOC is not valid JSON: {_one_line(err)}") from None
    raw_entries = doc.entries or []
    doc.entries = None
    if len(raw_entries) > limits.max_toc_entries:
        raise TOCError(f"TOC has {len(raw_entries)} entries, more than the limit of "
                       f"{limits.max_toc_entries} (limits.max_toc_entries)")
    return doc.version or 0, _EntryParser(limits).parse_all(raw_entries)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


class _EntryParser:
    """Turns raw entries into TOCEntry objects, filling omitted owner names."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_bytes = limits.max_path_bytes
        self._max_depth = limits.max_path_depth
        self._user_names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}
        self._modtimes: dict[str, int] = {"": 0}
        self._modes: dict[int, int] = {}
        self._good_digest = ""  # the last digest checked: a file's digest and chunk's agree

    def parse_all(self, raw_entries: list[_RawEntry]) -> list[TOCEntry]:
        entries: list[TOCEntry] = []
        for i, raw in enumerate(raw_entries):
            raw_entries[i] = _FREED  # drop each raw record once converted: memory stays flat
            entries.append(self._parse(i, raw))
        return entries

    def _parse(self, index: int, raw: _RawEntry) -> TOCEntry:
        name = self._path(index, raw.name or "")
        etype = raw.type
        if etype is None:
            raise TOCError(f"{_where(index, name)} has no type")
        link_name = raw.link_name or ""
        if "\x00" in link_name:
            raise TOCError(f"{_where(index, name)} has a NUL byte in its link name")
        if etype == "hardlink":
            link_name = self._path(index, link_name)
        uid, gid = raw.uid or 0, raw.gid or 0
        chunk = etype == "chunk"
        digest = self._digest(raw.digest, "digest", index, name)
        chunk_digest = self._digest(raw.chunk_digest, "chunkDigest", index, name)
        return TOCEntry(
            name=name,
            type=etype,
            size=raw.size or 0,
            modtime=self._modtime(raw.modtime or ""),
            link_name=link_name,
            mode=self._mode(raw.mode),
            uid=uid,
            gid=gid,
            user_name="" if chunk else _owner(self._user_names, uid, raw.user_name),
            group_name="" if chunk else _owner(self._group_names, gid, raw.group_name),
            offset=raw.offset or 0,
            inner_offset=raw.inner_offset or 0,
            dev_major=raw.dev_major or 0,
            dev_minor=raw.dev_minor or 0,
            xattrs=_xattrs(raw.xattrs, _where(index, name)) if raw.xattrs else NO_XATTRS,
            digest=digest,
            chunk_offset=raw.chunk_offset or 0,
            chunk_size=raw.chunk_size or 0,
            # one string object for both when they agree (single-chunk files): less memory
            chunk_digest=digest if chunk_digest == digest else chunk_digest,
        )

    def _path(self, index: int, name: str) -> str:
        """``name`` cleaned; NULs, over-long and over-deep paths refused."""
        if "\x00" in name:
            raise TOCError(f"TOC entry {index} has a NUL byte in a path")
        if len(name) > self._max_bytes // 4 and len(name.encode(errors="replace")) > \
                self._max_bytes:
            raise TOCError(f"TOC entry {index} has a path of more than {self._max_bytes} "
                           f"bytes (limits.max_path_bytes)")
        name = clean_name(name)
        if name.count("/") >= self._max_depth:
            raise TOCError(f"TOC entry {index} ({name[:80]!r}...) is more than "
                           f"{self._max_depth} directories deep (limits.max_path_depth)")
        return name

    def _digest(self, value: str | None, key: str, index: int, name: str) -> str:
        if not value or value == self._good_digest:
            return value or ""
        if not _DIGEST_RE.match(value):
            raise TOCError(f"{_where(index, name)}: {key!r} {value[:80]!r} is not a sha256 "
                           "digest")
        self._good_digest = value
        return value

    def _mode(self, value: int | None) -> int:
        mode = (value or 0) & MODE_BITS
        return self._modes.setdefault(mode, mode)  # one int object per mode, not per entry

    def _modtime(self, value: str) -> int:
        known = self._modtimes.get(value)
        if known is None:
            known = _parse_modtime(value)
            if len(self._modtimes) >= _MODTIME_CACHE:
                self._modtimes = {"": 0}
            self._modtimes[value] = known
        return known


def _parse_modtime(value: str) -> int:
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise TOCError(f"TOC modtime {value[:40]!r} is not an RFC3339 time") from None


def _owner(names: dict[int, str], owner_id: int, name: str | None) -> str:
    # The reference writes a name only the first time an id appears.
    if name:
        names[owner_id] = name
        return name
    return names.get(owner_id, "")


def _where(index: int, name: str) -> str:
    """How an error names an entry (formatted only for errors: it costs per entry)."""
    return f"TOC entry {index} ({name[:80]!r})"


def _xattrs(value: dict[str, str], where: str) -> MappingProxyType[str, bytes]:
    out: dict[str, bytes] = {}
    for name, encoded in value.items():
        if "\x00" in name or not name:
            raise TOCError(f"{where}: xattr {name[:40]!r} is malformed")
        try:
            out[name] = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise TOCError(f"{where}: xattr {name[:40]!r} is not valid base64") from None
    return MappingProxyType(out)
