"""TOC JSON to TOCEntry objects, for hostile input at a bounded cost.

msgspec decodes and type-checks the JSON in C (types, integer ranges, entry types). A TOC as
writers write it is decoded straight into its final entries, then checked and completed a
column at a time (names, digests, times, owners) with loops that run in C; anything unusual
(a null, a NUL, a bad digest, conflicting owner names...) sends the TOC to the careful path,
which converts entry by entry and says what is wrong with which entry. Both accept and refuse
the same TOCs. Every problem is one TOCError with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import operator
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import compress, repeat
from types import MappingProxyType
from typing import Annotated, Literal, cast

import msgspec

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.toc import MODE_BITS, NO_XATTRS, TOCJSON, TOCEntry, clean_name

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


class _DecodedEntry(TOCEntry, rename="camel", frozen=True, gc=False):
    """A TOCEntry as decoded from JSON, before its modtime becomes epoch seconds (and so on:
    see _FastPath). Strict: a null or a missing name or type is for the careful path."""

    name: str
    type: _EntryType
    size: _UInt = 0
    modtime: str | None = None  # type: ignore[assignment]  # int once completed
    link_name: str = ""
    mode: _UInt = 0
    uid: _UInt = 0
    gid: _UInt = 0
    user_name: str = ""
    group_name: str = ""
    offset: _UInt = 0
    inner_offset: _UInt = 0
    dev_major: _UInt = 0
    dev_minor: _UInt = 0
    xattrs: Mapping[str, str] = NO_XATTRS  # type: ignore[assignment]  # bytes once checked
    digest: str = ""
    chunk_offset: _UInt = 0
    chunk_size: _UInt = 0
    chunk_digest: str = ""

    def __eq__(self, other: object) -> bool:  # equal to a TOCEntry of the same fields
        if not isinstance(other, TOCEntry):
            return NotImplemented
        return msgspec.structs.astuple(self) == msgspec.structs.astuple(other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


class _DecodedTOC(msgspec.Struct, gc=False):
    version: _UInt = 0
    entries: list[_DecodedEntry] = msgspec.field(default_factory=list)


_FAST_DECODER = msgspec.json.Decoder(_DecodedTOC)


def parse_entries(raw: bytes | TOCJSON, limits: LimitsConfig) -> tuple[int, list[TOCEntry]]:
    """The TOC's version and its entries, checked one by one (not yet against each other)."""
    json = raw if isinstance(raw, TOCJSON) else TOCJSON(raw)
    # Decoding makes an object per JSON object: count them first (each entry is one, its
    # xattrs a second), so millions of tiny entries are refused before they cost gigabytes.
    if json.peek().count(b"{") > 2 * limits.max_toc_entries + 1:
        raise TOCError(f"TOC holds more than {limits.max_toc_entries} entries "
                       f"(limits.max_toc_entries)")
    parsed = _parse_fast(json, limits)
    return parsed if parsed is not None else parse_carefully(json.take(), limits)


def parse_carefully(raw: bytes, limits: LimitsConfig) -> tuple[int, list[TOCEntry]]:
    """``parse_entries`` entry by entry: what it does with a TOC the fast path turns down."""
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


_FORCE = msgspec.structs.force_setattr
_NAME, _TYPE, _MODTIME, _MODE = (operator.attrgetter(key)
                                 for key in ("name", "type", "modtime", "mode"))
_DIGEST, _CHUNK_DIGEST = operator.attrgetter("digest"), operator.attrgetter("chunk_digest")
_SLASHES = operator.methodcaller("count", "/")
_ENDS_WITH_SLASH = operator.methodcaller("endswith", "/")
_XATTRS = operator.attrgetter("xattrs")
_SHA256_PREFIX = "sha256:"
# an empty, "." or ".." part in names joined by NULs (which no name holds); "" is the root
_UNCLEAN_JOINED = re.compile(r"/\.{0,2}[/\0]|\0\.{0,2}/|\0\.{1,2}\0")


def _parse_fast(json: TOCJSON, limits: LimitsConfig) -> tuple[int, list[TOCEntry]] | None:
    """The TOC's version and entries, if it is as writers write it; else None, for the
    careful path to say what is wrong (or to accept what only it handles, like nulls)."""
    if b"\\u0000" in json.peek():  # a NUL in some string: the careful path says where
        return None
    try:
        doc = _FAST_DECODER.decode(json.take())  # the JSON goes once decoded
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    entries: list[TOCEntry] = list(doc.entries)
    doc.entries = []
    if len(entries) > limits.max_toc_entries:
        return None
    try:
        _FastPath(entries, limits).complete()
    except TOCError:
        return None
    return doc.version, entries


class _FastPath:
    """Checks and completes decoded entries a column at a time, as _EntryParser does entry
    by entry; any TOCError means: let the careful path look at this TOC."""

    def __init__(self, entries: list[TOCEntry], limits: LimitsConfig) -> None:
        self._entries = entries
        self._limits = limits
        self._types = list(map(_TYPE, entries))
        self._chunks = "chunk" in self._types

    def complete(self) -> None:
        self._names()
        self._hardlinks()
        self._digests()
        self._set_each("modtime", self._modtimes())
        modes = list(map(_MODE, self._entries))
        masked = {mode: mode & MODE_BITS for mode in set(modes)}  # one int object per mode
        self._set_each("mode", map(masked.__getitem__, modes))
        for id_key, name_key in (("uid", "user_name"), ("gid", "group_name")):
            names = self._owners(id_key, name_key)
            if names is not None:
                self._set_each(name_key, names)
        self._xattrs()

    def _set_each(self, key: str, values: Iterable[object]) -> None:
        deque(map(_FORCE, self._entries, repeat(key), values), maxlen=0)  # a loop in C

    def _positions_of(self, etype: str) -> Iterator[int]:
        return compress(range(len(self._types)), map(etype.__eq__, self._types))

    def _names(self) -> None:
        entries, limits = self._entries, self._limits
        names = list(map(_NAME, entries))
        longest = max(map(len, names), default=0)
        if longest > limits.max_path_bytes // 4:
            raise TOCError("a long name")  # measured in bytes by the careful path
        # Writers end directories' names with "/": those are cleaned here; anything else
        # unclean anywhere (one search over all names) means cleaning name by name.
        for at in list(compress(range(len(names)), map(_ENDS_WITH_SLASH, names))):
            names[at] = names[at][:-1]
        for at in list(compress(range(len(names)), map(".".__eq__, names))):
            names[at] = ""  # the root, as writers list it ("./")
        if _UNCLEAN_JOINED.search("\0" + "\0".join(names) + "\0"):
            names = [clean_name(name) for name in map(_NAME, entries)]
        for at in list(compress(range(len(names)),
                                map(operator.is_not, map(_NAME, entries), names))):
            _FORCE(entries[at], "name", names[at])
        if longest >= limits.max_path_depth and max(map(_SLASHES, names)) >= \
                limits.max_path_depth:
            raise TOCError("a deep name")

    def _hardlinks(self) -> None:
        parser = _EntryParser(self._limits)
        for at in self._positions_of("hardlink"):
            entry = self._entries[at]
            _FORCE(entry, "link_name", parser.path(at, entry.link_name))

    def _digests(self) -> None:
        digests = list(map(_DIGEST, self._entries))
        chunk_digests = list(map(_CHUNK_DIGEST, self._entries))
        known = dict(zip(digests, digests, strict=True))  # one string object per digest
        checked = set(known).union(chunk_digests)
        checked.discard("")
        if not _all_sha256(checked):
            raise TOCError("a malformed digest")
        self._set_each("chunk_digest", map(known.get, chunk_digests, chunk_digests))

    def _modtimes(self) -> Iterable[int]:
        stamps: list[str | None] = list(map(_MODTIME, self._entries))
        seconds = {stamp: _parse_modtime(stamp) if stamp else 0 for stamp in set(stamps)}
        return map(seconds.__getitem__, stamps)

    def _owners(self, id_key: str, name_key: str) -> list[str] | None:
        """Owner names as _owner fills them: the reference names an id only where it first
        appears. Conflicting names for one id, or one named only later, are for the careful
        path."""
        given: list[str] = list(map(operator.attrgetter(name_key), self._entries))
        if not any(given):
            return None  # no name anywhere: nothing to fill in
        ids: list[int] = list(map(operator.attrgetter(id_key), self._entries))
        pairs = {pair for pair in set(zip(ids, given, strict=True)) if pair[1]}
        table = dict(pairs)
        if len(table) != len(pairs):
            raise TOCError("two names for one owner")
        first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))
        if not all(given[first[owner]] for owner in table):
            raise TOCError("an owner named after it first appears")
        names = list(map(table.get, ids, repeat("")))
        if self._chunks:
            for at, etype in enumerate(self._types):
                if etype == "chunk":
                    if given[at]:
                        raise TOCError("a named chunk")
                    names[at] = ""
        return names

    def _xattrs(self) -> None:
        entries = self._entries
        for at in list(compress(range(len(entries)), map(
                operator.is_not, map(_XATTRS, entries), repeat(NO_XATTRS)))):
            entry = entries[at]
            encoded = cast(Mapping[str, str], entry.xattrs)  # as decoded: base64
            _FORCE(entry, "xattrs", _xattrs(dict(encoded), _where(at, entry.name))
                   if encoded else NO_XATTRS)


def _all_sha256(digests: set[str]) -> bool:
    """Whether every digest is "sha256:" and 64 lowercase hex digits, checked in C."""
    if set(map(len, digests)) - {len(_SHA256_PREFIX) + 64}:
        return False
    if not all(map(operator.methodcaller("startswith", _SHA256_PREFIX), digests)):
        return False
    try:
        joined = "".join(digests).encode("ascii")
    except UnicodeEncodeError:
        return False
    # deleting every hex digit leaves what the prefix holds besides them, digest by digest
    return joined.translate(None, b"0123456789abcdef") == b"sh:" * len(digests)


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
        name = self.path(index, raw.name or "")
        etype = raw.type
        if etype is None:
            raise TOCError(f"{_where(index, name)} has no type")
        link_name = raw.link_name or ""
        if "\x00" in link_name:
            raise TOCError(f"{_where(index, name)} has a NUL byte in its link name")
        if etype == "hardlink":
            link_name = self.path(index, link_name)
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

    def path(self, index: int, name: str) -> str:
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
