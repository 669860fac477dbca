"""The TOC (``stargz.index.json``): entries, hostile-input parsing and JSON output.

``parse_toc`` accepts only what a reader can use safely: every problem becomes one
TOCError (or UnsafePathError) with a one-line message. Entry names are cleaned to
root-relative paths that can never leave the root.
"""

from __future__ import annotations

import base64
import gc
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

from stargz.config import LimitsConfig

if TYPE_CHECKING:
    from stargz.estargz.tocindex import TOCIndex

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"

ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
MODE_BITS = 0o7777  # permissions + setuid/setgid/sticky; tar type bits are dropped
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})  # shared: most entries have none
# A name that needs no cleaning: no empty, "." or ".." component, no leading or trailing "/".
_UNCLEAN_NAME = re.compile(r"(?:\A|/)\.{0,2}(?:/|\Z)")


class TOCEntry(msgspec.Struct, frozen=True, gc=False):
    """One TOC entry. From ``parse_toc`` the name is cleaned (root-relative, "" = root).

    An immutable record (a compact msgspec Struct: a TOC may hold a million of them); it
    holds no reference cycles, so the garbage collector does not track it."""

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
    xattrs: Mapping[str, bytes] = NO_XATTRS
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


class TOCJSON:
    """A TOC's JSON handed to ``parse_toc``, which lets go of it as soon as it is decoded:
    a big TOC's JSON is tens of megabytes, about what the entries decoded from it take, so
    holding both would double the peak. ``again`` makes it again, for the rare TOC that needs
    a second, careful decoding (without it, the bytes are kept)."""

    def __init__(self, data: bytes, again: Callable[[], bytes] | None = None) -> None:
        self._data: bytes | None = data
        self._again = again

    def peek(self) -> bytes:
        return self.take() if self._data is None else self._data

    def take(self) -> bytes:
        """The JSON, no longer held here if it can be made again."""
        data = self._data
        if data is None:
            assert self._again is not None
            return self._again()
        if self._again is not None:
            self._data = None
        return data


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
    if not _UNCLEAN_NAME.search(name):
        return name  # the usual case, without normpath's cost
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


def format_modtime(epoch: int) -> str:
    if epoch == 0:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_toc(
    raw: bytes | TOCJSON, data_end: int | None = None, limits: LimitsConfig | None = None
) -> TOC:
    """Parse and structurally validate TOC JSON.

    ``data_end``, when known, is where file data must end (the TOC's own offset):
    offsets at or past it are refused. ``limits`` (default: LimitsConfig()) bound what the
    TOC may cost: entries, path depth and length, chunk sizes; beyond them, a TOCError.
    """
    from stargz.estargz.tocindex import TOCIndex  # both modules import this one
    from stargz.estargz.tocparse import parse_entries

    limits = limits or LimitsConfig()
    # Parsing makes millions of short-lived containers and no reference cycles: the cyclic
    # collector, run again and again over them, would take a third of the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        version, entries = parse_entries(raw, limits)
        index = TOCIndex(entries, data_end, limits)  # raises TOCError on any inconsistency
    finally:
        if collecting:
            gc.enable()
    return TOC(version, entries, index)
