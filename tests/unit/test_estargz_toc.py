"""TOC parsing: names are cleaned, hostile or malformed TOCs give one TOCError each."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stargz.errors import TOCError, UnsafePathError
from stargz.estargz.toc import TOC, TOCEntry, clean_name, parse_toc
from stargz.estargz.tocindex import TOCIndex

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _toc(*entries: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries), **top}).encode()


def _reg(name: str, size: int = 3, offset: int = 100, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "reg", "size": size, "offset": offset,
            "digest": D1, "chunkDigest": D1, **kw}


@pytest.mark.parametrize("raw,want", [
    ("a/b", "a/b"), ("./a/b", "a/b"), ("/a/b", "a/b"), ("../a/b", "a/b"), ("a/b/", "a/b"),
    ("../../../etc/passwd", "etc/passwd"), ("a/../../b", "b"), ("./", ""), ("/", ""),
    ("", ""), ("..", ""), ("//a//b", "a/b"), ("a/./b", "a/b"),
])
def test_clean_name_never_escapes_root(raw: str, want: str) -> None:
    assert clean_name(raw) == want


def test_parse_a_valid_toc_and_serialise_it_back() -> None:
    raw = _toc(
        {"name": "./dir/", "type": "dir", "mode": 0o40755, "uid": 1, "userName": "one",
         "modtime": "2020-09-13T12:26:40Z", "xattrs": {"user.a": "YWJj"}},
        _reg("./dir/file", uid=1),
        {"name": "link", "type": "hardlink", "linkName": "/dir/file"},
    )
    toc = parse_toc(raw, data_end=1000)
    d, f, hl = toc.entries
    assert (d.name, d.mode, d.modtime, d.xattrs, d.user_name) == (
        "dir", 0o755, 1_600_000_000, {"user.a": b"abc"}, "one")
    assert f.user_name == "one"  # omitted names are filled from the first entry with the id
    assert hl.link_name == "dir/file"
    again = parse_toc(TOC(toc.version, toc.entries).to_json(), data_end=1000)
    assert again.entries == toc.entries


def test_to_json_uses_reference_keys_and_omits_zero_values() -> None:
    entry = TOCEntry(name="a<b>&c", type="reg", size=0, mode=0o644, digest=D1)
    doc = json.loads(TOC(1, [entry]).to_json())
    assert doc == {"version": 1, "entries": [
        {"name": "a<b>&c", "type": "reg", "mode": 0o644, "digest": D1}]}
    assert b"\\u003c" in TOC(1, [entry]).to_json()  # escaped like Go's encoder


HOSTILE = {
    "not json": b"{nope",
    "array": b"[1, 2]",
    "string": b'"x"',
    "entries not a list": _toc(entries={"a": 1}),
    "entry not object": _toc("x"),  # type: ignore[arg-type]
    "unknown type": _toc({"name": "a", "type": "socket"}),
    "name not string": _toc({"name": 5, "type": "dir"}),
    "negative size": _toc(_reg("a", size=-1)),
    "bool size": _toc(_reg("a", size=True)),
    "float offset": _toc(_reg("a", offset=1.5)),
    "huge offset": _toc(_reg("a", offset=2**70)),
    "offset past data": _toc(_reg("a", offset=5000)),
    "duplicate chunk offsets": _toc(_reg("a"), _reg("b")),
    "chunk without digest": _toc(
        _reg("a", size=6, chunkSize=3),
        {"name": "a", "type": "chunk", "offset": 200, "chunkOffset": 3}),
    "no chunk digest and no file digest": _toc(
        {"name": "a", "type": "reg", "size": 3, "offset": 100}),
    "bad digest": _toc(_reg("a", chunkDigest="md5:abc")),
    "orphan chunk": _toc({"name": "a", "type": "chunk", "offset": 5, "chunkDigest": D1}),
    "chunk of another file": _toc(
        _reg("a", size=6, chunkSize=3),
        {"name": "b", "type": "chunk", "offset": 200, "chunkOffset": 3, "chunkDigest": D2}),
    "chunk gap": _toc(
        _reg("a", size=6, chunkSize=2),
        {"name": "a", "type": "chunk", "offset": 200, "chunkOffset": 3, "chunkDigest": D2}),
    "chunks short of size": _toc(_reg("a", size=6, chunkSize=3)),
    "chunk beyond size": _toc(_reg("a", size=2, chunkSize=3)),
    "hardlink to missing": _toc({"name": "l", "type": "hardlink", "linkName": "nope"}),
    "hardlink out of root": _toc({"name": "l", "type": "hardlink", "linkName": "../../etc/x"}),
    "hardlink loop": _toc({"name": "a", "type": "hardlink", "linkName": "b"},
                          {"name": "b", "type": "hardlink", "linkName": "a"}),
    "hardlink to self": _toc({"name": "a", "type": "hardlink", "linkName": "a"}),
    "hardlink to dir": _toc({"name": "d", "type": "dir"},
                            {"name": "l", "type": "hardlink", "linkName": "d"}),
    "hardlink to root": _toc({"name": "l", "type": "hardlink", "linkName": "/"}),
    "entry under a file": _toc(_reg("a"), _reg("a/b", offset=200, chunkDigest=D2)),
    "entry under a symlink loop": _toc({"name": "s", "type": "symlink", "linkName": "t"},
                                       {"name": "t", "type": "symlink", "linkName": "s"},
                                       {"name": "s/passwd", "type": "fifo"}),
    "root not a dir": _toc({"name": "/", "type": "fifo"}),
    "nul in name": _toc({"name": "a\u0000b", "type": "dir"}),
    "bad xattr base64": _toc({"name": "d", "type": "dir", "xattrs": {"user.x": "!!"}}),
    "xattrs not object": _toc({"name": "d", "type": "dir", "xattrs": ["x"]}),
    "bad modtime": _toc({"name": "d", "type": "dir", "modtime": "yesterday"}),
    "version string": _toc(version="1"),
    "empty file with chunk": _toc(
        {"name": "a", "type": "reg", "size": 0, "digest": D1},
        {"name": "a", "type": "chunk", "offset": 9, "chunkDigest": D1}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tocs_give_one_clear_error(case: str) -> None:
    with pytest.raises((TOCError, UnsafePathError)) as info:
        parse_toc(HOSTILE[case], data_end=1000)
    message = str(info.value)
    assert message and "\n" not in message


def test_single_chunk_files_may_rely_on_file_digests() -> None:
    # Old (legacy stargz) TOCs: no chunkDigest, no chunk entries, but every file has a digest.
    raw = _toc({"name": "a", "type": "reg", "size": 3, "offset": 100, "digest": D1})
    index = TOCIndex(parse_toc(raw, data_end=1000).entries, 1000)
    assert index.chunks_of(_found(index, "a"))[0].digest == D1


def test_implied_directories_and_duplicates() -> None:
    raw = _toc(_reg("x/y/z"), {"name": "x/y/z", "type": "fifo"})
    toc = parse_toc(raw, data_end=1000)
    assert toc.index is not None
    found = toc.index.lookup("x/y/z")
    assert found is not None and found.type == "fifo"  # a later duplicate wins, as in tar
    implied = toc.index.lookup("x/y")
    assert implied is not None and (implied.type, implied.mode) == ("dir", 0o755)
    assert list(toc.index.listdir("x")) == ["y"]


def test_chunk_ends_come_from_the_next_offset() -> None:
    raw = _toc(_reg("a", size=6, chunkSize=3),
               {"name": "a", "type": "chunk", "offset": 300, "chunkOffset": 3, "chunkDigest": D2},
               _reg("b", offset=500))
    toc = parse_toc(raw, data_end=800)
    assert toc.index is not None
    ends = [(c.compressed_offset, c.compressed_end, c.chunk_size)
            for name in ("a", "b") for c in toc.index.chunks_of(_found(toc.index, name))]
    assert ends == [(100, 300, 3), (300, 500, 3), (500, 800, 3)]


def _found(index: TOCIndex, name: str) -> TOCEntry:
    entry = index.lookup(name)
    assert entry is not None
    return entry


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                          st.floats(allow_nan=False), st.text(max_size=20))
_keys = st.sampled_from(["name", "type", "size", "offset", "chunkOffset", "chunkSize",
                         "chunkDigest", "digest", "linkName", "mode", "xattrs", "modtime",
                         "innerOffset", "uid", "userName"])
_values = st.one_of(_json_scalars, st.sampled_from(
    ["reg", "dir", "chunk", "hardlink", "symlink", "a", "../a", "/", D1, D2, "a/b"]),
    st.integers(0, 2000))
_entries = st.lists(st.dictionaries(_keys, _values, max_size=8), max_size=8)


@settings(max_examples=500, deadline=None)
@given(_entries)
def test_fuzz_toc_entries_only_typed_errors(entries: list[dict[str, Any]]) -> None:
    raw = json.dumps({"version": 1, "entries": entries}).encode()
    try:
        toc = parse_toc(raw, data_end=1500)
    except (TOCError, UnsafePathError):
        return
    for entry in toc.entries:
        assert ".." not in entry.name.split("/") and not entry.name.startswith("/")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_toc_bytes_only_typed_errors(raw: bytes) -> None:
    with contextlib.suppress(TOCError, UnsafePathError):
        parse_toc(raw)
