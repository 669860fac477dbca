"""Structural checks of a TOC and the name index a reader serves lookups from.

Everything a hostile TOC could use to confuse a reader, or to make it spend without bound,
is refused here: chunk lists that do not tile their file, offsets outside the data,
duplicated or overlapping chunk positions, chunks over the size limit, a file's chunks out
of order in the blob, missing digests, hardlinks to nothing (or loops), entries under an
earlier non-directory, and more entries (listed or implied) than the limits allow. Entries
under the layer's own symlinks go where containerd's applier puts them (tocplace).

Everything here is iterative and linear in the TOC's size: no recursion, whatever the depth.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from itertools import compress, islice, repeat

import msgspec

from stargz.config import LimitsConfig
from stargz.errors import TOCError
from stargz.estargz.chunks import Chunk, ChunkTable
from stargz.estargz.toc import TOCEntry
from stargz.estargz.tocplace import Placer

IMPLIED_DIR_MODE = 0o755
_MAX_HARDLINK_HOPS = 64
_NAME, _TYPE = operator.attrgetter("name"), operator.attrgetter("type")
_HEAD = operator.itemgetter(0)


def parent_of(name: str) -> str:
    return name.rpartition("/")[0]


def base_of(name: str) -> str:
    return name.rpartition("/")[2]


class TOCIndex:
    """Names → entries, directory children, link counts, all checked for consistency.

    ``entries`` holds every path once (the later of duplicates, as in tar), parents before
    children and otherwise in TOC order, with the directories the TOC only implies."""

    def __init__(
        self,
        entries: Sequence[TOCEntry],
        data_end: int | None,
        limits: LimitsConfig | None = None,
    ) -> None:
        limits = limits or LimitsConfig()
        self.chunks = ChunkTable(entries, data_end, limits)
        self.entries: dict[str, TOCEntry] = {}
        self._placer: Placer | None = None
        self.implied: set[str] = set()  # directories no entry lists (their parents are)
        self._positions: dict[str, int] = {"": -1}  # where each name was (last) listed
        types = list(map(_TYPE, entries))
        self._listed = entries  # until built: _move_chunks counts the files named alike
        self._files_named: dict[str, int] | None = None
        self._implied_budget = _ImpliedBudget(len(entries), limits)
        self._add_all(entries, types)
        self.links: dict[str, TOCEntry] = {}  # hardlink name → its final target
        if "hardlink" in types:
            self._resolve_links()
        # as listed, hardlinks unresolved; made on the first listing (parents are checked now)
        self._children: dict[str, list[TOCEntry]] | None = None
        self._check_parents()
        self._link_counts: dict[int, int] = {}  # only targets of hardlinks (others: 1)
        for target in self.links.values():
            self._link_counts[id(target)] = self._link_counts.get(id(target), 1) + 1
        self._positions.clear()  # only needed while building
        self._listed, self._files_named = (), None
        # Each path's number (its place in ``entries``): a compact key for it, from which a
        # filesystem computes inode numbers instead of keeping a table of them. Made on the
        # first use (the entries never change once built).
        self._numbered: tuple[list[TOCEntry], dict[str, int]] | None = None

    def _add_all(self, entries: Sequence[TOCEntry], types: list[str]) -> None:
        known, positions, implied = self.entries, self._positions, self.implied
        known[""] = TOCEntry(name="", type="dir", mode=IMPLIED_DIR_MODE)
        placer = self._placer = Placer(known)
        if self._add_as_listed(entries, types):
            return
        any_symlink = False  # until one is listed, every entry stays where it is listed
        replaced = False  # whether a later entry replaced a path by a non-directory
        for position, listed in enumerate(entries):
            etype = listed.type
            if etype == "chunk":
                continue
            entry = placer.place(listed) if any_symlink else listed
            name = entry.name
            if name != listed.name:
                self._move_chunks(listed, name)
            previous = known.get(name)
            if previous is None:
                if parent_of(name) not in known:
                    self._add_parents(name, position)
            else:
                replaced = replaced or etype != "dir"
                implied.discard(name)
            if etype == "symlink" or (previous is not None and previous.type == "symlink"):
                placer.noting(entry)
                any_symlink = True
            known[name] = entry  # a later duplicate wins, keeping the first one's place
            positions[name] = position
        if known[""].type != "dir":
            raise TOCError("the TOC's root entry is not a directory")
        if replaced:  # else no directory was replaced: nothing to drop
            self._drop_replaced()

    def _add_as_listed(self, entries: Sequence[TOCEntry], types: list[str]) -> bool:
        """A TOC as writers write it, in C-level passes: nothing listed under a symlink's
        name, each name once (the root, if listed, a directory), and a directory
        listed after something under it (implied until then) a directory, so nothing is
        replaced and every entry stays where it is listed. False, having added nothing, for
        any other TOC."""
        listed = list(compress(entries, map("chunk".__ne__, types))) if "chunk" in types \
            else entries
        names = list(map(_NAME, listed))
        if "symlink" in types and _under_a_symlink(listed, names):
            return False
        count = len(names)
        order = dict(zip(names, range(count), strict=True))
        # the root may come after other entries (ctr-remote lists its landmark file first)
        if len(order) != count or ("" in order and listed[order[""]].type != "dir"):
            return False
        order[""] = -1
        parents = map(_HEAD, map(str.rpartition, names, repeat("/")))
        # where an entry's parent is not listed before it (its parents are implied there)
        early = list(compress(range(count), map(operator.ge, map(order.get, parents,
                                                                 repeat(count)), range(count))))
        if not self._implied_stay_dirs(early, names, listed, order):
            return False
        start = 0
        for at in early:
            self.entries.update(zip(names[start:at], listed[start:at], strict=True))
            self._add_parents(names[at], at)
            start = at
        self.entries.update(zip(names[start:], listed[start:], strict=True))
        self.implied.difference_update([name for name in self.implied if name in order])
        return True

    @staticmethod
    def _implied_stay_dirs(early: list[int], names: list[str], listed: Sequence[TOCEntry],
                           order: dict[str, int]) -> bool:
        """Whether every directory implied before it is listed is listed as a directory."""
        for at in early:
            parent = parent_of(names[at])
            while order.get(parent, -1) > at or parent not in order:
                later = order.get(parent)
                if later is not None and listed[later].type != "dir":
                    return False
                parent = parent_of(parent)
        return True

    def _move_chunks(self, listed: TOCEntry, name: str) -> None:
        """A file written through a symlink is served from where it lands."""
        if listed.type != "reg" or listed.size == 0:
            return
        if self._files_named is None:  # only a file written through a symlink asks
            self._files_named = _count_file_names(self._listed)
        if self._files_named.get(listed.name, 0) > 1:
            raise TOCError(f"{listed.name!r} is listed twice and written through a symlink")
        several = self.chunks.several.pop(listed.name, None)
        if several is not None:
            self.chunks.several[name] = tuple(msgspec.structs.replace(chunk, path=name)
                                              for chunk in several)

    def _add_parents(self, name: str, position: int) -> None:
        """Implied directories for the missing parents of ``name``, outermost first."""
        missing: list[str] = []
        parent = parent_of(name) if name else ""
        while parent not in self.entries:
            missing.append(parent)
            parent = parent_of(parent)
        for dirname in reversed(missing):
            self._implied_budget.spend(dirname)
            self.entries[dirname] = TOCEntry(name=dirname, type="dir", mode=IMPLIED_DIR_MODE)
            self._positions[dirname] = position
            self.implied.add(dirname)

    def _drop_replaced(self) -> None:
        """Entries under a directory that a later entry replaced by a non-directory are gone,
        as containerd's applier removes them; under one listed earlier, the layer is bad."""
        known, positions = self.entries, self._positions
        dropped: set[str] = set()
        for name in list(known):
            if not name:
                continue
            parent_name = parent_of(name)
            if parent_name in dropped or (known[parent_name].type != "dir"
                                          and positions[parent_name] > positions[name]):
                dropped.add(name)
                del known[name]
                self.chunks.several.pop(name, None)

    def _resolve_links(self) -> None:
        for name, entry in self.entries.items():
            if entry.type == "hardlink":
                self.links[name] = self._resolve(entry)

    def _resolve(self, entry: TOCEntry) -> TOCEntry:
        seen = 0
        while entry.type == "hardlink":
            target = self.entries.get(entry.link_name) or self._through_symlinks(entry.link_name)
            if target is None or entry.link_name == "":
                raise TOCError(f"hardlink {entry.name!r} points to missing {entry.link_name!r}")
            seen += 1
            if seen > _MAX_HARDLINK_HOPS or target is entry:
                raise TOCError(f"hardlink {entry.name!r} is part of a link loop")
            entry = target
        if seen and entry.type == "dir":
            raise TOCError(f"a hardlink points to directory {entry.name!r}")
        return entry

    def _check_parents(self) -> None:
        """Every entry's parent is a directory (checked once per parent, in C-level passes;
        the first entry under a non-directory named when there is one)."""
        known = self.entries
        parents = set(map(_HEAD, map(str.rpartition, islice(known, 1, None), repeat("/"))))
        if all(known[parent].type == "dir" for parent in parents):
            return
        for name in islice(known, 1, None):
            parent = known[parent_of(name)]
            if parent.type != "dir":
                raise TOCError(f"{name!r} is under {parent.name!r}, which is not a directory")

    @property
    def children(self) -> dict[str, list[TOCEntry]]:
        """Each directory's entries, as listed (hardlinks unresolved): made on first use."""
        if self._children is None:
            children: dict[str, list[TOCEntry]] = {}
            for name, entry in islice(self.entries.items(), 1, None):  # the root is first
                parent_name = parent_of(name)
                kids = children.get(parent_name)
                if kids is None:
                    kids = children[parent_name] = []
                kids.append(entry)
            self._children = children
        return self._children

    def _through_symlinks(self, name: str) -> TOCEntry | None:
        """A hardlink's target named through a symlink of this layer, as containerd finds it."""
        if self._placer is None or not name:
            return None
        parent, _, base = name.rpartition("/")
        where = self._placer.resolve_dir(parent)
        return self.entries.get(f"{where}/{base}" if where else base)

    def lookup(self, name: str) -> TOCEntry | None:
        """The entry at the cleaned ``name``; a hardlink gives its target's entry."""
        entry = self.entries.get(name)
        if entry is not None and entry.type == "hardlink":
            return self.links[name]
        return entry

    def listdir(self, name: str) -> dict[str, TOCEntry]:
        """A directory's children by base name (hardlinks resolved to their targets)."""
        return {
            base_of(child.name): self.links[child.name] if child.type == "hardlink" else child
            for child in self.children.get(name, ())
        }

    def walk(self) -> Iterator[TOCEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def _numbering(self) -> tuple[list[TOCEntry], dict[str, int]]:
        if self._numbered is None:
            self._numbered = (list(self.entries.values()),
                              dict(zip(self.entries, range(len(self.entries)), strict=True)))
        return self._numbered

    def number_of(self, entry: TOCEntry) -> int:
        """The number of a path's entry, as ``lookup`` or ``listdir`` gave it."""
        return self._numbering()[1][entry.name]

    def entry_at(self, number: int) -> TOCEntry | None:
        """The entry numbered ``number`` (None when no entry has that number)."""
        in_order = self._numbering()[0]
        return in_order[number] if 0 <= number < len(in_order) else None

    def chunks_of(self, entry: TOCEntry) -> tuple[Chunk, ...]:
        """The chunks of regular file ``entry`` (as lookup gave it), in file order."""
        return self.chunks.of(entry)

    def nlink(self, entry: TOCEntry) -> int:
        if entry.type == "dir":
            kids = self.children.get(entry.name, ())
            return 2 + sum(1 for k in kids if k.type == "dir")
        return self._link_counts.get(id(entry), 1)


def _under_a_symlink(listed: Sequence[TOCEntry], names: list[str]) -> bool:
    """Whether some entry's path goes through a symlink's name: containerd would write it
    where the symlink leads (tocplace). Otherwise every entry stays where it is listed."""
    symlinks = set(compress(names, map("symlink".__eq__, map(_TYPE, listed))))
    ancestors: set[str] = set()
    for directory in set(map(_HEAD, map(str.rpartition, names, repeat("/")))):
        while directory and directory not in ancestors:
            ancestors.add(directory)
            directory = directory.rpartition("/")[0]
    return not ancestors.isdisjoint(symlinks)


def _count_file_names(entries: Sequence[TOCEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.type == "reg":
            counts[entry.name] = counts.get(entry.name, 0) + 1
    return counts


class _ImpliedBudget:
    """Directories the TOC implies count against max_toc_entries, and their names against
    max_toc_bytes: a few deep names must not make the index hold millions of directories."""

    def __init__(self, listed: int, limits: LimitsConfig) -> None:
        self._entries_left = limits.max_toc_entries - listed
        self._bytes_left = limits.max_toc_bytes
        self._limits = limits

    def spend(self, dirname: str) -> None:
        self._entries_left -= 1
        self._bytes_left -= len(dirname)
        if self._entries_left < 0:
            raise TOCError(f"TOC entries and the directories they imply are more than "
                           f"{self._limits.max_toc_entries} (limits.max_toc_entries)")
        if self._bytes_left < 0:
            raise TOCError(f"the directories the TOC implies have names of more than "
                           f"{self._limits.max_toc_bytes} bytes (limits.max_toc_bytes)")
