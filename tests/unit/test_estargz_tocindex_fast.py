"""The index of a TOC as writers write it is made in C-level passes: the same index (or the
same error) as entry by entry."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import astuple

from stargz.errors import TOCError
from stargz.estargz.tocindex import TOCIndex
from stargz.estargz.tocparse import parse_entries
from tests.unit.test_estargz_tocparse_fast import LIMITS, WRITERS_TOC, _entry, _toc


def _index_of(raw: bytes) -> tuple[Any, ...] | str:
    try:
        _, entries = parse_entries(raw, LIMITS)
        index = TOCIndex(entries, 1000, LIMITS)  # the data ends past every offset
    except TOCError as err:
        return f"TOCError: {err}"
    listed = list(index.entries.items())
    return (
        [(name, astuple(entry)) for name, entry in listed],
        sorted(index.implied),
        {name: [kid.name for kid in kids] for name, kids in index.children.items()},
        {name: target.name for name, target in index.links.items()},
        [index.nlink(entry) for _, entry in listed],
        [index.number_of(entry) for _, entry in listed],
    )


def _same_either_way(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways agree; whether the C-level way took the TOC."""
    taken: list[bool] = []
    real = TOCIndex._add_as_listed

    def noting(self: TOCIndex, entries: Any, types: list[str]) -> bool:
        taken.append(real(self, entries, types))
        return taken[-1]

    with monkeypatch.context() as patched:
        patched.setattr(TOCIndex, "_add_as_listed", noting)
        fast = _index_of(raw)
    with monkeypatch.context() as patched:
        patched.setattr(TOCIndex, "_add_as_listed", lambda self, entries, types: False)
        careful = _index_of(raw)
    assert fast == careful
    return any(taken)


def test_a_writers_toc_is_indexed_as_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = WRITERS_TOC.replace(b'"type": "symlink"', b'"type": "fifo"')
    raw = raw.replace(b'"dev/null"', b'"bin/null"')
    assert _same_either_way(raw, monkeypatch)
    assert _same_either_way(WRITERS_TOC, monkeypatch)  # a symlink nothing is listed under
    # an entry under a symlink's name goes where the symlink leads: entry by entry
    through = WRITERS_TOC.replace(b'"dev/null"', b'"lib/null"')
    assert not _same_either_way(through, monkeypatch)
    assert _index_of(through)[0][-1][0] == "usr/lib/null"
    implied = _toc({"name": "data/d0/", "type": "dir"}, {"name": "data/d0/f", "type": "reg"},
                   {"name": "data/d1/f", "type": "reg"})
    assert _same_either_way(implied, monkeypatch)  # data and data/d1 implied where first used


@pytest.mark.parametrize("entries", [
    [{"name": "a/b", "type": "reg"}, {"name": "a", "type": "dir"}],  # child first: implied
    [{"name": "a", "type": "dir"}, {"name": "a", "type": "reg"}],  # replaced
    [{"name": "a", "type": "reg"}, {"name": "a/b", "type": "reg"}],  # under a file
    [{"name": "a", "type": "dir"}, {"name": "./", "type": "dir"}],  # the root listed late
    [{"name": "./", "type": "reg"}, {"name": "a", "type": "dir"}],  # a root that is a file
    [{"name": "a/b/c", "type": "reg"}, {"name": "x", "type": "dir"},
     {"name": "a/b/d", "type": "reg"}, {"name": "a", "type": "dir"}],  # implied, then listed
    [{"name": "a/b/c", "type": "reg"}, {"name": "a/b", "type": "reg"}],  # implied, replaced
])
def test_unusual_tocs_get_the_same_index(entries: list[dict[str, Any]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _same_either_way(_toc(*entries), monkeypatch)


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry, max_size=8))
def test_any_toc_gets_the_same_index_either_way(entries: list[dict[str, Any]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same_either_way(_toc(*entries), monkeypatch)


def test_children_are_made_on_first_use() -> None:
    _, entries = parse_entries(_toc({"name": "a", "type": "dir"},
                                    {"name": "a/f", "type": "reg"}), LIMITS)
    index = TOCIndex(entries, None, LIMITS)
    assert index._children is None
    assert list(index.listdir("a")) == ["f"] and index._children is not None
