"""Reordering entries so prioritized files (and what they need) come first.

Mirrors the reference's rules: each prioritized path pulls its parent directories
and, for a hardlink, its target before it; a later duplicate of a name replaces the
earlier one; existing landmarks and TOCs are dropped by the caller.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from stargz.errors import BuildError
from stargz.estargz.tarstream import TarMember
from stargz.estargz.toc import clean_name


@dataclass
class SpooledEntry:
    member: TarMember
    data_offset: int  # where the payload starts in the spooled tar


class _Ordered:
    """Entries by cleaned name, keeping stream order; re-adding a name moves it to the end."""

    def __init__(self) -> None:
        self.by_name: dict[str, SpooledEntry] = {}  # dict order is the stream order

    def add(self, entry: SpooledEntry) -> None:
        name = clean_name(entry.member.name)
        self.by_name.pop(name, None)
        self.by_name[name] = entry

    def take(self, name: str) -> SpooledEntry | None:
        return self.by_name.pop(name, None)


def prioritize(
    entries: Sequence[SpooledEntry], prioritized: Sequence[str], allow_missing: bool
) -> tuple[list[SpooledEntry], list[str], list[SpooledEntry]]:
    """Split entries into (prioritized part, missing names, the rest in original order)."""
    remaining = _Ordered()
    for entry in entries:
        remaining.add(entry)
    moved = _Ordered()
    missing: list[str] = []
    for wanted in prioritized:
        name = clean_name(wanted)
        if name not in remaining.by_name and name not in moved.by_name:
            if not allow_missing:
                raise BuildError(f"prioritized file {wanted!r} is not in the layer")
            missing.append(wanted)
            continue
        _move(name, remaining, moved, depth=0)
    return list(moved.by_name.values()), missing, list(remaining.by_name.values())


def _move(name: str, remaining: _Ordered, moved: _Ordered, depth: int) -> None:
    if depth > 256:
        raise BuildError(f"hardlinks around {name!r} form a loop")
    if name:
        # Parents first (an implied parent, absent from the tar, is simply skipped).
        _move(posixpath.dirname(name), remaining, moved, depth + 1)
    entry = remaining.by_name.get(name)
    if entry is None:
        return
    if entry.member.type == "hardlink":
        target = clean_name(entry.member.link_name)
        if target != name:
            _move(target, remaining, moved, depth + 1)
    entry = remaining.take(name)
    if entry is not None:
        moved.add(entry)
