"""Layers with symlinks of their own, placed as containerd's applier places them: an entry
under a symlink lands where the symlink leads (inside the root), entries under a directory
that a later entry replaces are gone, an entry under an earlier non-directory is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stargz.errors import TOCError
from stargz.estargz.chunks import Chunk
from stargz.estargz.toc import parse_toc
from stargz.estargz.tocindex import TOCIndex

D1 = "sha256:" + "1" * 64


def _index(*entries: dict[str, Any]) -> TOCIndex:
    raw = json.dumps({"version": 1, "entries": list(entries)}).encode()
    index = parse_toc(raw, data_end=1000).index
    assert index is not None
    return index


def _link(name: str, target: str) -> dict[str, Any]:
    return {"name": name, "type": "symlink", "linkName": target}


def _whiteout(name: str) -> dict[str, Any]:
    return {"name": name, "type": "reg"}


def _file(name: str, kind: str = "reg") -> dict[str, Any]:
    if kind != "reg":
        return {"name": name, "type": kind}
    return {"name": name, "type": "reg", "size": 3, "offset": 100, "digest": D1,
            "chunkDigest": D1}



def _chunks(index: TOCIndex, name: str) -> tuple[Chunk, ...]:
    entry = index.lookup(name)
    assert entry is not None
    return index.chunks_of(entry)

def test_umoci_repack_of_bin_replaced_by_a_symlink() -> None:
    # what `umoci repack` writes after `rm -rf bin; ln -s usr/bin bin` (busybox moved)
    index = _index({"name": "./", "type": "dir"}, _link("bin", "usr/bin"),
                   _whiteout("bin/.wh.busybox"),
                   _whiteout("bin/.wh.ls"), {"name": "usr/", "type": "dir"},
                   {"name": "usr/bin/", "type": "dir"}, _file("usr/bin/busybox"))
    assert sorted(index.listdir("usr/bin")) == [".wh.busybox", ".wh.ls", "busybox"]
    assert index.lookup("bin").type == "symlink"  # type: ignore[union-attr]
    assert index.listdir("bin") == {}
    assert _chunks(index, "usr/bin/busybox")[0].digest == D1


@pytest.mark.parametrize("target,where", [
    ("/etc", "etc/passwd"), ("../../etc", "etc/passwd"), ("a/../../b/./c", "b/c/passwd"),
    ("/", "passwd"), ("..", "passwd"),
])
def test_entries_under_a_symlink_never_leave_the_root(target: str, where: str) -> None:
    index = _index(_link("s", target), _file("s/passwd", "fifo"))
    assert index.lookup(where).type == "fifo"  # type: ignore[union-attr]
    assert "s/passwd" not in index.entries


def test_chains_of_symlinks_and_implied_directories() -> None:
    index = _index(_link("a", "b"), _link("b", "/c/d"), _file("a/x/y"))
    assert index.lookup("c/d/x/y").type == "reg"  # type: ignore[union-attr]
    assert index.lookup("c/d/x").type == "dir"  # type: ignore[union-attr]
    assert _chunks(index, "c/d/x/y")


def test_a_file_written_through_a_symlink_replaces_the_one_there() -> None:
    index = _index(_file("d/f", "fifo"), _link("s", "d"), _file("s/f"))
    assert index.lookup("d/f").type == "reg"  # type: ignore[union-attr]


def test_entries_listed_before_a_replacing_non_directory_are_gone() -> None:
    index = _index(_file("bin/busybox"), _file("bin/sub/x", "fifo"), _link("bin", "usr/bin"),
                   _file("etc/a", "fifo"), _file("etc", "fifo"))
    assert set(index.entries) == {"", "bin", "etc"}
    assert not any(index.chunks_of(entry) for entry in index.walk())


def test_an_entry_under_an_earlier_file_is_refused() -> None:
    with pytest.raises(TOCError, match="which is not a directory"):
        _index(_file("a", "fifo"), _file("a/b", "fifo"))


def test_an_entry_under_a_symlink_to_a_file_is_refused() -> None:
    with pytest.raises(TOCError, match="which is not a directory"):
        _index(_file("f", "fifo"), _link("s", "f"), _file("s/x", "fifo"))


def test_a_hardlink_named_through_a_symlink() -> None:
    index = _index(_file("usr/bin/busybox"), _link("bin", "usr/bin"),
                   {"name": "sh", "type": "hardlink", "linkName": "bin/busybox"})
    assert index.lookup("sh") is index.lookup("usr/bin/busybox")
