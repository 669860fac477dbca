"""containerd's filter syntax, as List requests carry it."""

from __future__ import annotations

import pytest

from stargz.errors import InvalidArgumentError
from stargz.snapshotter.filters import parse_filters
from stargz.snapshotter.metastore import Info, Kind

LAYER = Info(
    name="sha256:abc",
    parent="sha256:base",
    kind=Kind.COMMITTED,
    labels={"containerd.io/snapshot.ref": "sha256:abc", "team": "blue", "a.b": "dotted"},
)
ACTIVE = Info(name="default/3/extract", parent="", kind=Kind.ACTIVE)


def matches(filters: list[str], info: Info) -> bool:
    return parse_filters(filters).matches(info.field_value)


def test_metadata_layer_target_lookup() -> None:
    # exactly what containerd's metadata snapshotter sends after a remote ALREADY_EXISTS
    query = 'labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:base"'
    assert matches([query], LAYER)
    assert not matches([query.replace("sha256:base", "")], LAYER)
    assert not matches(['labels."containerd.io/snapshot.ref"==sha256:abc,parent==""'], ACTIVE)


@pytest.mark.parametrize(
    ("query", "layer", "active"),
    [
        ("kind==committed", True, False),
        ("kind!=committed", False, True),
        ("name==sha256:abc", True, False),
        ("labels.team", True, False),  # presence
        ("labels.team==blue", True, False),
        ("labels.team!=blue", False, True),  # absent counts as "not equal", as in Go
        ('labels."a.b"==dotted', True, False),
        ("labels.a.b==dotted", True, False),  # unquoted dots join the path the same way
        ("name~=^default/", False, True),
        ("name~=/ext.act$/", False, True),
        ("name~=|abc|", True, False),
        ("  kind == active  ", False, True),
        ('name=="sha256:abc"', True, False),
        (r'name=="sha256:\x61bc"', True, False),
    ],
)
def test_selectors(query: str, layer: bool, active: bool) -> None:
    assert matches([query], LAYER) is layer
    assert matches([query], ACTIVE) is active


def test_list_of_filters_is_an_or_and_empty_matches_all() -> None:
    assert matches(["kind==view", "kind==active"], ACTIVE)
    assert not matches(["kind==view", "kind==committed"], ACTIVE)
    assert matches([], ACTIVE) and matches([""], LAYER)


@pytest.mark.parametrize(
    "query",
    ["kind=", "kind===x", "kind==active,", "name==/abc/", '"unterminated', "kind~=(", ",", "a b"],
)
def test_bad_syntax_is_invalid_argument(query: str) -> None:
    with pytest.raises(InvalidArgumentError, match="filter"):
        parse_filters([query])
