"""`stargz blob ls` lines: the file-system view of a TOC, one entry a line.

A line is ``TYPE SIZE MODE PATH`` plus `` -> TARGET`` for links: SIZE is ``MAJOR,MINOR`` for
devices, MODE is the permission, setuid, setgid and sticky bits in octal. Paths are
root-relative; directories the tar left implicit are listed (mode 0755), the root is not.
Paths and link targets are shown through ``quote_name``: control characters escaped (``\\n``,
``\\x1b``), backslashes doubled, so a hostile name can not drive the terminal.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

from stargz.estargz.toc import TOCEntry, clean_name
from stargz.printable import quote_name

IMPLIED_DIR_MODE = 0o755
DEVICE_TYPES = ("char", "block")
LINK_TYPES = ("symlink", "hardlink")


def format_entry(
    entry_type: str, size: int, mode: int, path: str, link: str = "",
    dev_major: int = 0, dev_minor: int = 0,
) -> str:
    """One ls line from plain fields (also used to format the Go reference's view in tests)."""
    shown_size = f"{dev_major},{dev_minor}" if entry_type in DEVICE_TYPES else str(size)
    line = f"{entry_type:<8} {shown_size:>12} {mode & 0o7777:04o} {quote_name(path)}"
    if entry_type in LINK_TYPES:
        line += f" -> {quote_name(link)}"
    return line


def format_toc_entry(entry: TOCEntry) -> str:
    link = clean_name(entry.link_name) if entry.type == "hardlink" else entry.link_name
    size = entry.size if entry.type == "reg" else 0
    return format_entry(entry.type, size, entry.mode, entry.name, link,
                        entry.dev_major, entry.dev_minor)


def filesystem_view(entries: Iterable[TOCEntry]) -> Iterator[TOCEntry]:
    """Entries by path in TOC order, parents first: chunk entries and the root dropped,
    implied directories added, a repeated path listed once (the later entry wins, as in tar)."""
    by_name: dict[str, TOCEntry] = {}
    for entry in entries:
        if entry.type == "chunk" or entry.name == "":
            continue
        parent = posixpath.dirname(entry.name)
        missing: list[str] = []
        while parent and parent not in by_name:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for name in reversed(missing):
            by_name[name] = TOCEntry(name=name, type="dir", mode=IMPLIED_DIR_MODE)
        by_name[entry.name] = entry
    yield from by_name.values()
