"""The TOC parser's fast path (a column at a time) gives exactly what the careful path (entry
by entry) gives, and hands every TOC it does not handle to the careful path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.reader import open_blob, read_toc_json
from stargz.estargz.source import FileSource
from stargz.estargz.toc import NO_XATTRS, TOCJSON, TOCEntry
from stargz.estargz.tocparse import _parse_fast, parse_carefully, parse_entries
from tests.unit.test_layer_helpers import build_blob

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "ab" * 32
T1 = "2020-09-13T12:26:40Z"
LIMITS = LimitsConfig()


def _toc(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries)}).encode()


def _outcome(parse: Any, raw: bytes) -> tuple[int, list[tuple[Any, ...]]] | str:
    try:
        version, entries = parse(raw, LIMITS)
    except TOCError as err:
        return f"TOCError: {err}"
    return version, [msgspec.structs.astuple(e) for e in entries]


def _same_either_way(raw: bytes) -> tuple[int, list[TOCEntry]] | None:
    """Both paths agree; returns what the fast path made (None: it turned the TOC down)."""
    assert _outcome(parse_entries, raw) == _outcome(parse_carefully, raw)
    return _parse_fast(TOCJSON(raw), LIMITS)


WRITERS_TOC = _toc(
    {"name": "./", "type": "dir", "modtime": T1, "mode": 0o40755, "uid": 0, "userName": "root",
     "groupName": "root"},
    {"name": "bin/", "type": "dir", "modtime": T1, "mode": 0o755},
    {"name": "bin/sh", "type": "reg", "size": 6, "offset": 100, "modtime": T1, "mode": 0o4755,
     "digest": D1, "chunkDigest": D1, "uid": 1000, "userName": "app", "gid": 50,
     "groupName": "staff", "xattrs": {"user.a": "eA=="}},
    {"name": "bin/big", "type": "reg", "size": 6, "offset": 200, "chunkSize": 3,
     "digest": D2, "chunkDigest": D1, "uid": 1000, "gid": 50},
    {"name": "bin/big", "type": "chunk", "offset": 300, "chunkOffset": 3, "chunkDigest": D2},
    {"name": "bin/ln", "type": "hardlink", "linkName": "./bin/sh", "uid": 1000},
    {"name": "lib", "type": "symlink", "linkName": "../usr/lib/"},
    {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "xattrs": {}},
)


def test_a_toc_as_writers_write_it_takes_the_fast_path() -> None:
    parsed = _same_either_way(WRITERS_TOC)
    assert parsed is not None
    version, entries = parsed
    by_name = {(e.name, e.type): e for e in entries}
    assert version == 1 and entries[0].name == "" and by_name["bin", "dir"].modtime == 1600000000
    sh = by_name["bin/sh", "reg"]
    assert (sh.mode, sh.user_name, sh.group_name) == (0o4755, "app", "staff")
    assert sh.chunk_digest is sh.digest  # one string object for both
    assert sh.xattrs == {"user.a": b"x"} and entries[0].mode == 0o755  # type bits dropped
    big = by_name["bin/big", "reg"]
    assert (big.user_name, big.group_name) == ("app", "staff")  # named where first seen
    assert by_name["bin/big", "chunk"].user_name == ""  # chunks carry no owner
    assert by_name["bin/ln", "hardlink"].link_name == "bin/sh"
    assert by_name["lib", "symlink"].link_name == "../usr/lib/"  # a symlink's target as is
    assert by_name["dev/null", "char"].xattrs is NO_XATTRS


@pytest.mark.parametrize("odd", [
    {"name": "a", "type": "reg", "size": None},  # nulls: accepted by the careful path only
    {"name": "a", "type": "dir", "modtime": None},
    {"type": "dir"},  # no name: the root
    {"name": "a\u0000b", "type": "dir"},  # refused, by the careful path, naming the entry
    {"name": "a", "type": "reg", "digest": "sha256:XYZ"},
    {"name": "a", "type": "reg", "chunkDigest": "sha512:" + "0" * 64},
    {"name": "a", "type": "dir", "modtime": "yesterday"},
    {"name": "a", "type": "dir", "modtime": 5},
    {"name": "a", "type": "dir", "xattrs": {"user.a": "not base64!"}},
    {"name": "a", "type": "dir", "xattrs": {"": "eA=="}},
    {"name": "a", "type": "dir", "uid": 7, "userName": "other"},  # a second name for uid 7
    {"name": "a", "type": "dir", "uid": 9},  # uid 9 named only later
    {"name": "a", "type": "hardlink", "linkName": "x/" * 300},
    {"name": "a/" * 300, "type": "dir"},
    {"name": "x" * 2000, "type": "dir"},
    {"name": "a//b/./c/../d", "type": "dir"},
    {"name": "a", "type": "fifo", "size": -1},
])
def test_unusual_tocs_get_the_same_outcome(odd: dict[str, Any]) -> None:
    raw = _toc({"name": "u", "type": "dir", "uid": 7, "userName": "seven"}, odd,
               {"name": "v", "type": "dir", "uid": 9, "userName": "nine"})
    _same_either_way(raw)


def test_a_toc_the_fast_path_turns_down_is_parsed_carefully() -> None:
    raw = _toc({"name": "a", "type": "dir", "uid": 9}, {"name": "b", "type": "dir", "uid": 9,
                                                          "userName": "nine"})
    assert _same_either_way(raw) is None
    _, entries = parse_entries(raw, LIMITS)
    assert [e.user_name for e in entries] == ["", "nine"]  # as the reference reads it


_names = st.text(alphabet="ab./", max_size=8)
_entry = st.fixed_dictionaries(
    {"name": _names, "type": st.sampled_from(["dir", "reg", "symlink", "hardlink", "fifo"])},
    optional={"uid": st.integers(0, 3), "userName": st.sampled_from(["", "r", "s"]),
              "gid": st.integers(0, 3), "groupName": st.sampled_from(["", "g"]),
              "linkName": _names, "mode": st.integers(0, 0o177777),
              "modtime": st.sampled_from([T1, "2021-01-01T00:00:00+01:00"]),
              "digest": st.sampled_from(["", D1, D2]),
              "chunkDigest": st.sampled_from(["", D1, D2])})


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry, max_size=8))
def test_any_toc_gets_the_same_outcome_either_way(entries: list[dict[str, Any]]) -> None:
    _same_either_way(_toc(*entries))


def test_the_json_is_let_go_of_once_decoded_and_made_again_if_needed() -> None:
    made: list[bytes] = []

    def again(raw: bytes) -> bytes:
        made.append(raw)
        return raw

    handed = TOCJSON(WRITERS_TOC, lambda: again(WRITERS_TOC))
    assert parse_entries(handed, LIMITS)[1] and made == []
    assert handed._data is None  # nothing here keeps the JSON alive
    unusual = _toc({"name": "a", "type": "dir", "size": None})
    handed = TOCJSON(unusual, lambda: again(unusual))
    assert [e.name for e in parse_entries(handed, LIMITS)[1]] == ["a"]
    assert made == [unusual]  # made again for the careful path


def test_the_toc_json_read_alone_is_the_one_the_digest_covers(tmp_path: Path) -> None:
    built = build_blob(tmp_path, {"a": b"x" * 10, "d/b": b"y"})
    with FileSource(built.path) as source:
        raw = read_toc_json(source)
        unverified = open_blob(source)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == built.result.toc_digest
        assert unverified.toc_json == raw  # made again from the compressed TOC
        assert unverified.verify(built.result.toc_digest).lookup("d/b") is not None
