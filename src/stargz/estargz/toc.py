"""The TOC (``stargz.index.json``): entries, hostile-input parsing and JSON output.

``parse_toc`` accepts only what a reader can use safely: every problem becomes one
TOCError (or UnsafePathError) with a one-line message. Entry names are cleaned to
root-relative paths that can never leave the root.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stargz.errors import TOCError

if TYPE_CHECKING:
    from stargz.estargz.tocindex import TOCIndex

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"

ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
MODE_BITS = 0o7777  # permissions + setuid/setgid/sticky; tar type bits are dropped
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_MAX_INT = 1 << 63


@dataclass(frozen=True)
class TOCEntry:
    """One TOC entry. From ``parse_toc`` the name is cleaned (root-relative, "" = root)."""

    name: str
    type: str
    size: int = 0
    modtime: int = 0
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """The reference's JSON shape: camelCase keys, zero values omitted (but name/type)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for key, value in (
            ("size", self.size),
            ("modtime", format_modtime(self.modtime)),
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("userName", self.user_name),
            ("groupName", self.group_name),
            ("offset", self.offset),
            ("innerOffset", self.inner_offset),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
        ):
            if value:
                out[key] = value
        if self.xattrs:
            out["xattrs"] = {
                k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.xattrs.items())
            }
        for key, value in (
            ("digest", self.digest),
            ("chunkOffset", self.chunk_offset),
            ("chunkSize", self.chunk_size),
            ("chunkDigest", self.chunk_digest),
        ):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True)
class TOC:
    version: int
    entries: list[TOCEntry]
    # The validated name index parse_toc built; kept so readers need not build it again.
    index: TOCIndex | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> bytes:
        """Serialise as the reference does (tab-indented; <, >, & escaped like Go's encoder)."""
        doc = {"version": self.version, "entries": [e.to_json_dict() for e in self.entries]}
        text = json.dumps(doc, indent="\t", ensure_ascii=False, separators=(",", ": "))
        for plain, escaped in _GO_JSON_ESCAPES:
            text = text.replace(plain, escaped)
        # Names that were not UTF-8 in the tar get U+FFFD for each bad byte, as Go does.
        encoded = text.encode("utf-8", "surrogateescape")
        return encoded.decode("utf-8", "replace").encode("utf-8")


_GO_JSON_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def clean_name(name: str) -> str:
    """Clean a tar path to a root-relative one: "./a", "/a", "../a", "a/" all become "a"."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


def format_modtime(epoch: int) -> str:
    if epoch == 0:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_modtime(value: str) -> int:
    if value == "":
        return 0
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise TOCError(f"TOC modtime {value[:40]!r} is not an RFC3339 time") from None


def parse_toc(raw: bytes, data_end: int | None = None) -> TOC:
    """Parse and structurally validate TOC JSON.

    ``data_end``, when known, is where file data must end (the TOC's own offset):
    offsets at or past it are refused.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise TOCError(f"TOC is not valid JSON: {str(err).splitlines()[0][:120]}") from None
    if not isinstance(doc, dict):
        raise TOCError(f"TOC JSON is a {type(doc).__name__}, not an object")
    version = doc.get("version", 0)
    if not _is_int(version) or version < 0:
        raise TOCError(f"TOC version {version!r} is not a non-negative integer")
    raw_entries = doc.get("entries")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise TOCError("TOC 'entries' is not a list")
    entries = _EntryParser(data_end).parse_all(raw_entries)
    from stargz.estargz.tocindex import TOCIndex  # the index imports this module

    index = TOCIndex(entries, data_end)  # raises TOCError on any inconsistency
    return TOC(version, entries, index)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _EntryParser:
    """Turns raw JSON entries into TOCEntry objects, filling omitted owner names."""

    def __init__(self, data_end: int | None) -> None:
        self._data_end = data_end
        self._user_names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}

    def parse_all(self, raw_entries: Iterable[object]) -> list[TOCEntry]:
        return [self._parse(i, raw) for i, raw in enumerate(raw_entries)]

    def _parse(self, index: int, raw: object) -> TOCEntry:
        if not isinstance(raw, dict):
            raise TOCError(f"TOC entry {index} is not an object")
        where = f"TOC entry {index}"
        name = _get(raw, "name", str, "", where)
        if "\x00" in name:
            raise TOCError(f"{where} has a NUL byte in its name")
        where = f"TOC entry {index} ({name[:80]!r})"
        etype = _get(raw, "type", str, "", where)
        if etype not in ENTRY_TYPES:
            raise TOCError(f"{where} has unknown type {etype[:20]!r}")
        ints = {key: _get_uint(raw, key, where) for key in _INT_KEYS}
        uid, gid = ints["uid"], ints["gid"]
        user_name = self._owner_name(self._user_names, uid, _get(raw, "userName", str, "", where))
        group_name = self._owner_name(
            self._group_names, gid, _get(raw, "groupName", str, "", where)
        )
        link_name = _get(raw, "linkName", str, "", where)
        if "\x00" in link_name:
            raise TOCError(f"{where} has a NUL byte in its link name")
        return TOCEntry(
            name=clean_name(name),
            type=etype,
            size=ints["size"],
            modtime=_parse_modtime(_get(raw, "modtime", str, "", where)),
            link_name=clean_name(link_name) if etype == "hardlink" else link_name,
            mode=ints["mode"] & MODE_BITS,
            uid=uid,
            gid=gid,
            user_name=user_name if etype != "chunk" else "",
            group_name=group_name if etype != "chunk" else "",
            offset=ints["offset"],
            inner_offset=ints["innerOffset"],
            dev_major=ints["devMajor"],
            dev_minor=ints["devMinor"],
            xattrs=_parse_xattrs(raw.get("xattrs"), where),
            digest=_get_digest(raw, "digest", where),
            chunk_offset=ints["chunkOffset"],
            chunk_size=ints["chunkSize"],
            chunk_digest=_get_digest(raw, "chunkDigest", where),
        )

    @staticmethod
    def _owner_name(names: dict[int, str], owner_id: int, name: str) -> str:
        # The reference writes a name only the first time an id appears.
        if name:
            names[owner_id] = name
            return name
        return names.get(owner_id, "")


_INT_KEYS = (
    "size", "mode", "uid", "gid", "offset", "innerOffset", "devMajor", "devMinor",
    "chunkOffset", "chunkSize",
)


def _get(raw: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise TOCError(f"{where}: {key!r} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _get_uint(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key, 0)
    if value is None:
        return 0
    if not _is_int(value):
        raise TOCError(f"{where}: {key!r} is {type(value).__name__}, not an integer")
    if not 0 <= value < _MAX_INT:
        raise TOCError(f"{where}: {key!r} = {value} is out of range")
    return int(value)


def _get_digest(raw: dict[str, Any], key: str, where: str) -> str:
    value = _get(raw, key, str, "", where)
    if value and not _DIGEST_RE.match(value):
        raise TOCError(f"{where}: {key!r} {value[:80]!r} is not a sha256 digest")
    return str(value)


def _parse_xattrs(value: object, where: str) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TOCError(f"{where}: 'xattrs' is not an object")
    out: dict[str, bytes] = {}
    for name, encoded in value.items():
        if not isinstance(encoded, str) or "\x00" in name or not name:
            raise TOCError(f"{where}: xattr {name[:40]!r} is malformed")
        try:
            out[name] = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise TOCError(f"{where}: xattr {name[:40]!r} is not valid base64") from None
    return out
