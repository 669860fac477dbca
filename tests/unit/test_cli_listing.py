"""`stargz blob ls` line format and the file-system view it lists."""

from __future__ import annotations

from stargz.cli.listing import filesystem_view, format_entry, format_toc_entry
from stargz.estargz.toc import TOCEntry


def test_format_entry_columns() -> None:
    assert format_entry("reg", 42, 0o100644, "etc/motd").split() == ["reg", "42", "0644",
                                                                    "etc/motd"]
    assert format_entry("char", 0, 0o666, "dev/null", dev_major=1, dev_minor=3).split() == [
        "char", "1,3", "0666", "dev/null"]
    assert format_entry("symlink", 0, 0o777, "a b", "../c d").endswith(" 0777 a b -> ../c d")
    assert format_entry("dir", 0, 0o41777, "tmp").split()[2] == "1777"  # type bits dropped


def test_hardlink_targets_are_shown_cleaned() -> None:
    entry = TOCEntry(name="foo/hard", type="hardlink", mode=0o644, link_name="./foo/bar")
    assert format_toc_entry(entry).split() == ["hardlink", "0", "0644", "foo/hard", "->",
                                               "foo/bar"]


def test_view_adds_implied_dirs_and_drops_root_chunks_and_repeats() -> None:
    entries = [
        TOCEntry(name="", type="dir", mode=0o755),
        TOCEntry(name="a/b/file", type="reg", size=10, mode=0o600),
        TOCEntry(name="a/b/file", type="chunk", chunk_offset=5),
        TOCEntry(name="a", type="dir", mode=0o700),  # a real entry replaces the implied one
        TOCEntry(name="a/b/file", type="reg", size=20, mode=0o644),  # the later one wins
    ]
    view = [(e.name, e.type, e.mode, e.size) for e in filesystem_view(entries)]
    assert view == [("a", "dir", 0o700, 0), ("a/b", "dir", 0o755, 0),
                    ("a/b/file", "reg", 0o644, 20)]
