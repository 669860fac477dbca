"""The FUSE-free filesystem core: one inode table over every mounted layer.

The mount root holds one directory per layer (named by its digest). Inside a layer the TOC is
shown as overlayfs expects a lower layer to look:

- a whiteout ``.wh.NAME`` appears as ``NAME``, a 0:0 character device;
- ``.wh..wh..opq`` is hidden and marks its directory opaque (``trusted.overlay.opaque`` and
  ``user.overlay.opaque`` = ``y``); other ``.wh..wh.*`` entries (aufs bookkeeping) are hidden;
- hardlinks share one inode (the TOC index resolves them to one entry object);
- a hidden ``.stargz-snapshotter/<digest>.json`` in the layer root reports fetch progress;
- the prefetch landmark files in the layer root are hidden.

Operations raise ``OSError(errno)`` for POSIX conditions and StargzError from the layer;
:func:`stargz.fs.errmap.errno_for` turns both into the errno the kernel gets.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import posixpath
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from stargz.errors import InvalidArgumentError
from stargz.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOCEntry
from stargz.estargz.tocindex import base_of
from stargz.fs.view import LayerView

ROOT_INODE = 1
STATE_DIR = ".stargz-snapshotter"
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
DIR_SIZE = 4096
BLOCK_SIZE = 4096
LANDMARKS = (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)

NodeKind = Literal["root", "entry", "whiteout", "state_dir", "state_file"]

_TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


@dataclass(frozen=True)
class Attr:
    """What stat(2) shows for an inode."""

    ino: int
    mode: int  # type bits | permission bits
    nlink: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    mtime: int = 0  # epoch seconds (atime and ctime show the same)

    @property
    def blocks(self) -> int:  # 512-byte units, as stat(2) counts them
        return (self.size + 511) // 512


@dataclass(frozen=True, eq=False, slots=True)
class Node:
    """An inode, made when asked for: a layer's inode numbers are computed from its entries'
    numbers, so no table holds a node per entry (a layer may hold millions)."""

    ino: int
    kind: NodeKind
    layer: LayerSlot | None = None
    entry: TOCEntry | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and (other.ino, other.kind) == (self.ino, self.kind)

    def __hash__(self) -> int:
        return hash(self.ino)

    @property
    def immutable(self) -> bool:
        """Whether what stat(2) and readdir show of this inode can never change."""
        return self.kind in ("entry", "whiteout")


# A layer's inodes, from its base: the state directory, the state file, then two per entry
# (the entry, and the whiteout an entry named .wh.NAME shows as).
_STATE_DIR_OFFSET, _STATE_FILE_OFFSET, _ENTRIES_OFFSET = 0, 1, 2


@dataclass(eq=False)
class LayerSlot:
    """One layer in the mount: its view, and the range of inode numbers it owns."""

    name: str  # the directory name under the mount root
    view: LayerView
    base: int  # the first inode number of the range
    span: int  # how many inode numbers the range holds
    root: Node = field(init=False)
    usage: tuple[int, int] | None = None  # (file bytes, entries), counted once: layers never change

    @property
    def state_name(self) -> str:
        return f"{self.view.digest}.json"

    def entry_node(self, entry: TOCEntry, kind: NodeKind = "entry") -> Node:
        """The node of a TOC entry (hardlinks resolve to one entry: one inode)."""
        number = self.view.blob.number_of(entry)
        return Node(self.base + _ENTRIES_OFFSET + 2 * number + (kind == "whiteout"), kind,
                    self, entry)

    def node_at(self, ino: int) -> Node | None:
        offset = ino - self.base
        if offset == _STATE_DIR_OFFSET:
            return Node(ino, "state_dir", self)
        if offset == _STATE_FILE_OFFSET:
            return Node(ino, "state_file", self)
        number, whiteout = divmod(offset - _ENTRIES_OFFSET, 2)
        entry = self.view.blob.entry_at(number)
        if entry is None:
            return None
        if entry.type == "hardlink":
            return None  # a hardlink's name shows its target's inode
        if not whiteout:
            return self.root if number == 0 else Node(ino, "entry", self, entry)
        shows = base_of(entry.name)
        if not shows.startswith(WHITEOUT_PREFIX) or shows.startswith(WHITEOUT_META_PREFIX):
            return None
        return Node(ino, "whiteout", self, entry)


@dataclass(frozen=True)
class StatFS:
    block_size: int
    blocks: int
    files: int
    name_max: int = 255


class FSCore:
    """Inodes, lookups, attributes, listings, xattrs and reads over the mounted layers.

    Safe to call from one event loop while another thread adds or removes layers."""

    def __init__(self, uid: int = 0, gid: int = 0) -> None:
        self._uid, self._gid = uid, gid
        self._created = int(time.time())  # mtime of the mount root and state directories
        self._lock = threading.Lock()
        self._root = Node(ROOT_INODE, "root")
        self._layers: dict[str, LayerSlot] = {}
        # the layers by inode range, replaced whole on a change: readers need no lock
        self._ranges: tuple[list[int], list[LayerSlot]] = ([], [])
        self._next_ino = ROOT_INODE + 1  # never reused: the kernel may hold an old one

    # -- layers ---------------------------------------------------------------------------

    def add_layer(self, view: LayerView, name: str | None = None) -> str:
        """Serve ``view`` as ``<mount>/<name>`` (default: its digest); returns the name."""
        dirname = name or view.digest
        if not dirname or "/" in dirname or dirname in (".", "..") or "\0" in dirname:
            raise InvalidArgumentError(f"{dirname!r} can not name a layer directory")
        with self._lock:
            if dirname in self._layers:
                return dirname  # layers are immutable: the same name serves the same layer
            span = _ENTRIES_OFFSET + 2 * view.blob.entry_count
            slot = LayerSlot(dirname, view, self._next_ino, span)
            self._next_ino += span
            root_entry = view.blob.lookup("")
            assert root_entry is not None  # every index has its root directory
            slot.root = Node(slot.base + _ENTRIES_OFFSET, "entry", slot, root_entry)
            self._layers[dirname] = slot
            self._index_ranges()
        return dirname

    def remove_layer(self, name: str) -> None:
        with self._lock:
            if self._layers.pop(name, None) is not None:
                self._index_ranges()

    def _index_ranges(self) -> None:
        slots = sorted(self._layers.values(), key=lambda slot: slot.base)
        self._ranges = ([slot.base for slot in slots], slots)

    def layer_names(self) -> list[str]:
        with self._lock:
            return sorted(self._layers)

    def layers(self) -> list[LayerView]:
        with self._lock:
            return [slot.view for slot in self._layers.values()]

    def named_layers(self) -> list[tuple[str, LayerView]]:
        """(directory name, layer) of every layer served."""
        with self._lock:
            return [(name, slot.view) for name, slot in self._layers.items()]

    # -- operations -----------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        found = self.find(ino)
        if found is None:
            raise OSError(errno.ENOENT, f"no inode {ino}")
        return found

    def find(self, ino: int) -> Node | None:
        if ino == ROOT_INODE:
            return self._root
        bases, slots = self._ranges
        at = bisect.bisect_right(bases, ino) - 1
        if at < 0 or ino >= bases[at] + slots[at].span:
            return None
        return slots[at].node_at(ino)

    def layer_label(self, ino: int) -> str:
        """The digest of the layer holding ``ino`` ("" for the mount root or a gone inode)."""
        bases, slots = self._ranges
        at = bisect.bisect_right(bases, ino) - 1
        if at < 0 or ino >= bases[at] + slots[at].span:
            return ""
        return slots[at].view.digest

    def lookup(self, parent: int, name: str) -> Node:
        node = self.node(parent)
        if node.kind in ("root", "state_dir"):
            found = self.listing(parent).get(name)
        else:
            found = self._entry_child(self._directory(node), name)
        if found is None:
            found = self._hidden_child(node, name)
        if found is None:
            raise OSError(errno.ENOENT, f"no {name!r} in inode {parent}")
        return found

    def listing(self, ino: int) -> dict[str, Node]:
        """A directory's visible children, by name (hidden entries left out)."""
        node = self.node(ino)
        if node.kind == "root":
            with self._lock:
                return {name: slot.root for name, slot in sorted(self._layers.items())}
        if node.kind == "state_dir":
            assert node.layer is not None
            found = self._hidden_child(node, node.layer.state_name)
            return {node.layer.state_name: found} if found is not None else {}
        return self._entry_listing(self._directory(node))

    def check_directory(self, ino: int) -> None:
        """ENOTDIR unless ``ino`` is a directory (without listing it)."""
        node = self.node(ino)
        if node.kind not in ("root", "state_dir"):
            self._directory(node)

    def readdir(self, ino: int) -> list[tuple[str, Node]]:
        return sorted(self.listing(ino).items())

    def parent(self, ino: int) -> Node:
        """The directory holding ``ino`` (the mount root is its own parent)."""
        node = self.node(ino)
        slot = node.layer
        if slot is None or node.ino == slot.root.ino:
            return self._root
        if node.kind == "state_dir":
            return slot.root
        if node.kind == "state_file":
            return Node(slot.base + _STATE_DIR_OFFSET, "state_dir", slot)
        assert node.entry is not None
        holder = slot.view.blob.lookup(posixpath.dirname(node.entry.name))
        assert holder is not None  # every parent of a TOC name is a directory in the index
        return slot.entry_node(holder)

    def getattr(self, ino: int) -> Attr:
        return self.attr_of(self.node(ino))

    def attr_of(self, node: Node) -> Attr:
        """What stat(2) shows of ``node``, a node this core gave."""
        ino = node.ino
        if node.kind == "root":
            with self._lock:
                count = len(self._layers)
            return Attr(ino, stat.S_IFDIR | 0o755, 2 + count, self._uid, self._gid,
                        size=DIR_SIZE, mtime=self._created)
        if node.kind == "state_dir":
            return Attr(ino, stat.S_IFDIR | 0o500, 2, self._uid, self._gid, size=DIR_SIZE,
                        mtime=self._created)
        if node.kind == "state_file":
            size = len(self.state_json(node))
            return Attr(ino, stat.S_IFREG | 0o400, 1, self._uid, self._gid, size=size,
                        mtime=int(time.time()))
        entry = node.entry
        assert entry is not None and node.layer is not None
        if node.kind == "whiteout":
            return Attr(ino, stat.S_IFCHR, 1, entry.uid, entry.gid, mtime=entry.modtime)
        return self._entry_attr(node.layer, ino, entry)

    def readlink(self, ino: int) -> bytes:
        entry = self.node(ino).entry
        if entry is None or entry.type != "symlink":
            raise OSError(errno.EINVAL, f"inode {ino} is not a symlink")
        return os.fsencode(entry.link_name)

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._xattrs(self.node(ino)))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self._xattrs(self.node(ino)).get(name)
        if value is None:
            raise OSError(errno.ENODATA, f"no xattr {name!r} on inode {ino}")
        return value

    def check_open(self, ino: int) -> Node:
        """The node a file handle reads; directories and special files can not be read."""
        node = self.node(ino)
        if node.kind == "state_file":
            return node
        if node.kind != "entry" or node.entry is None:
            raise OSError(errno.EISDIR if node.kind != "whiteout" else errno.EACCES, "not a file")
        if node.entry.type == "dir":
            raise OSError(errno.EISDIR, f"{node.entry.name!r} is a directory")
        if node.entry.type != "reg":
            raise OSError(errno.EACCES, f"{node.entry.name!r} is not a regular file")
        return node

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.kind == "state_file":
            return self.state_json(node)[offset : offset + size]
        assert node.entry is not None and node.layer is not None
        if offset >= node.entry.size or size <= 0:
            return b""
        data = await node.layer.view.read(node.entry.name, offset, size)
        want = min(size, node.entry.size - offset)
        if len(data) != want:  # never hand out a short or long read as if it were the file
            raise OSError(errno.EIO, f"{node.entry.name!r}: layer gave {len(data)} of {want}")
        return data

    def statfs(self) -> StatFS:
        with self._lock:
            slots = list(self._layers.values())
        totals = [self._layer_usage(slot) for slot in slots]
        size = sum(t[0] for t in totals)
        files = 1 + sum(t[1] for t in totals)
        return StatFS(BLOCK_SIZE, (size + BLOCK_SIZE - 1) // BLOCK_SIZE, files)

    def state_json(self, node: Node) -> bytes:
        """The reference's layer state: digest, size, fetchedSize, fetchedPercent (and error); and
        ours, prefetchComplete (``stargz status`` shows it)."""
        assert node.layer is not None
        view = node.layer.view
        stats = view.stats()
        size, fetched = stats.size, stats.fetched_size
        doc: dict[str, object] = {}
        error = getattr(stats, "last_error", "")
        if error:
            doc["error"] = str(error)
        doc.update(
            digest=view.digest,
            size=size,
            fetchedSize=fetched,
            fetchedPercent=(100.0 * fetched / size) if size else 0.0,
            prefetchComplete=bool(getattr(stats, "prefetch_complete", False)),  # ours
        )
        return json.dumps(doc).encode() + b"\n"

    # -- helpers --------------------------------------------------------------------------

    def _directory(self, node: Node) -> Node:
        if node.kind != "entry" or node.entry is None or node.entry.type != "dir":
            raise OSError(errno.ENOTDIR, f"inode {node.ino} is not a directory")
        return node

    def _entry_child(self, parent: Node, name: str) -> Node | None:
        """The child ``name`` of a layer's directory as the listing shows it, found without
        listing the directory."""
        slot, holder = parent.layer, parent.entry
        assert slot is not None and holder is not None
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            return None  # whiteouts show under the name they hide; their markers are hidden
        blob = slot.view.blob
        prefix = f"{holder.name}/" if holder.name else ""
        found = blob.lookup_name(prefix + name)
        if found is not None:
            if not holder.name and name in LANDMARKS:
                return None  # the reference hides them too
            return slot.entry_node(found)
        whiteout = blob.lookup_name(f"{prefix}{WHITEOUT_PREFIX}{name}")
        return slot.entry_node(whiteout, "whiteout") if whiteout is not None else None

    def _entry_listing(self, parent: Node) -> dict[str, Node]:
        slot, holder = parent.layer, parent.entry
        assert slot is not None and holder is not None
        children = slot.view.blob.listdir(holder.name)
        shown: dict[str, Node] = {}
        for name, child in sorted(children.items()):
            if name.startswith(WHITEOUT_PREFIX):
                hidden = name[len(WHITEOUT_PREFIX) :]
                if (hidden and not name.startswith(WHITEOUT_META_PREFIX)
                        and hidden not in children):  # a real entry wins over its whiteout
                    shown[hidden] = slot.entry_node(child, "whiteout")
            elif holder.name or name not in LANDMARKS:  # the reference hides them too
                shown[name] = slot.entry_node(child)
        return shown

    def _is_opaque(self, node: Node) -> bool:
        assert node.layer is not None and node.entry is not None
        prefix = f"{node.entry.name}/" if node.entry.name else ""
        return node.layer.view.blob.lookup_name(prefix + OPAQUE_MARKER) is not None

    def _hidden_child(self, parent: Node, name: str) -> Node | None:
        slot = parent.layer
        if slot is None:
            return None
        if parent.ino == slot.root.ino and name == STATE_DIR:
            return Node(slot.base + _STATE_DIR_OFFSET, "state_dir", slot)
        if parent.kind == "state_dir" and name == slot.state_name:
            return Node(slot.base + _STATE_FILE_OFFSET, "state_file", slot)
        return None

    @staticmethod
    def _layer_usage(slot: LayerSlot) -> tuple[int, int]:
        if slot.usage is None:
            entries = list(slot.view.blob.walk())
            size = sum(e.size for e in entries if e.type == "reg")
            slot.usage = (size, len(entries))
        return slot.usage

    def _entry_attr(self, slot: LayerSlot, ino: int, entry: TOCEntry) -> Attr:
        kind = _TYPE_BITS.get(entry.type)
        if kind is None:
            raise OSError(errno.EIO, f"{entry.name!r} has unknown type {entry.type!r}")
        size = 0
        if entry.type == "reg":
            size = entry.size
        elif entry.type == "symlink":
            size = len(os.fsencode(entry.link_name))
        elif entry.type == "dir":
            size = DIR_SIZE
        rdev = os.makedev(entry.dev_major, entry.dev_minor) if kind in (
            stat.S_IFCHR, stat.S_IFBLK) else 0
        nlink = slot.view.blob.nlink(entry)
        return Attr(ino, kind | (entry.mode & 0o7777), nlink, entry.uid, entry.gid, rdev, size,
                    entry.modtime)

    def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        if node.kind != "entry" or node.entry is None:
            return {}
        out = {os.fsencode(k): v for k, v in node.entry.xattrs.items()}
        if node.entry.type == "dir" and node.layer is not None and self._is_opaque(node):
            out.update(dict.fromkeys(OPAQUE_XATTRS, b"y"))
        return out
