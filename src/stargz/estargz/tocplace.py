"""Where containerd's applier puts a layer's entries when the layer has symlinks of its own.

containerd applies a layer entry by entry into the snapshot's own directory (the overlayfs
upper directory, which holds this layer only): it resolves each entry's parent directory
through the symlinks already there, inside that directory (an absolute target starts at
its root, ``..`` stops at it), creates the missing directories (0755), and writes the entry
there; a whiteout becomes a 0:0 device in the resolved directory. So a layer that replaced
``bin/`` by ``bin -> usr/bin`` and lists ``bin/.wh.busybox`` (as ``umoci repack`` writes it)
whites out ``usr/bin/busybox``. :class:`Placer` gives each entry that resolved name, so a
lazily mounted layer shows what containerd's plain pull shows; no name ever leaves the root.
"""

from __future__ import annotations

from collections import deque

import msgspec

from stargz.errors import TOCError
from stargz.estargz.toc import TOCEntry

# Linux's MAXSYMLINKS: more hops than this while resolving one directory is a loop.
MAX_SYMLINK_HOPS = 40


class Placer:
    """Resolves entries' parent directories through the symlinks listed so far."""

    def __init__(self, known: dict[str, TOCEntry]) -> None:
        self._known = known  # name → entry, as listed so far (later duplicates win)
        self._resolved: dict[str, str] = {}  # directory → where it resolves; reset per symlink
        self._any_symlink = False

    def place(self, entry: TOCEntry) -> TOCEntry:
        """``entry``, renamed to where containerd would write it (usually unchanged)."""
        if not self._any_symlink or not entry.name:
            return entry
        parent, _, base = entry.name.rpartition("/")
        where = self.resolve_dir(parent)
        if where == parent:
            return entry
        return msgspec.structs.replace(entry, name=f"{where}/{base}" if where else base)

    def noting(self, entry: TOCEntry) -> None:
        """Call after listing ``entry``: a symlink, or a name a symlink held, changes how
        directories resolve."""
        previous = self._known.get(entry.name)
        if entry.type == "symlink" or (previous is not None and previous.type == "symlink"):
            self._any_symlink = True
            self._resolved.clear()

    def resolve_dir(self, path: str) -> str:
        """The directory ``path`` names once every symlink on the way is followed, like
        containerd's fs.RootPath over this layer alone; "" is the root."""
        done = self._resolved.get(path)
        if done is not None:
            return done
        parts = deque(path.split("/")) if path else deque()
        current = ""
        hops = 0
        while parts:
            part = parts.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                current = current.rpartition("/")[0]  # the root's parent is the root
                continue
            candidate = f"{current}/{part}" if current else part
            entry = self._known.get(candidate)
            if entry is None or entry.type != "symlink":
                current = candidate
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise TOCError(f"{path!r} goes through more than {MAX_SYMLINK_HOPS} symlinks")
            if entry.link_name.startswith("/"):
                current = ""
            parts.extendleft(reversed(entry.link_name.split("/")))
        self._resolved[path] = current
        return current
