"""The store's filesystem without FUSE: the tree containers/storage expects of an additional
layer store, over the store's layers (:class:`StoreLayers`) and an FSCore serving their files.

    <mount>/<base64 of the image ref>/<layer digest>/diff/   the layer's files, lazily pulled
                                                    /info    the JSON podman reads
                                                    /blob    the compressed layer
                                                    /use     podman creates it to take the layer

Nothing is listed until looked up: looking up ``diff`` resolves the layer (``info`` and ``blob``
need only the image's manifest and config); a layer that can not be served lazily is not found,
so podman pulls it itself. Creating ``use`` counts one use, removing the layer directory gives
one back (both answer ENOENT, as the reference store does: podman expects it). ``diff`` is an
FSCore layer root, so whiteouts, opaque directories and hardlinks look as in the snapshotter.

Operations raise OSError(errno) or StargzError; the FUSE adapter turns them into errno values.
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass, field
from typing import Literal

from stargz.fs.tree import DIR_SIZE, ROOT_INODE, Attr, FSCore, Node
from stargz.fs.view import LayerView
from stargz.registry.reference import Reference
from stargz.store.images import LayerInfo, parse_layer_digest, ref_of_dirname
from stargz.store.layers import Key, StoreLayer, StoreLayers

STORE_INO_BASE = 1 << 48  # FSCore numbers its inodes from 2 upward; the store's own start here
DIFF, INFO, BLOB, USE = "diff", "info", "blob", "use"
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o444

StoreKind = Literal["root", "image", "layer", "info", "blob"]


@dataclass(eq=False)
class StoreNode:
    ino: int
    kind: StoreKind
    name: str
    parent: StoreNode | None
    ref_name: str = ""  # image, layer, info, blob: the image reference as podman gave it
    ref: Reference | None = None
    digest: str = ""  # layer, info, blob
    info: LayerInfo | None = None  # info, blob
    children: dict[str, StoreNode] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.ref_name, self.digest)


def _errno(code: int, message: str) -> OSError:
    return OSError(code, message)


class StoreCore:
    """Lookups, attributes, listings, reads, ``use`` and release over the store's layers."""

    def __init__(self, files: FSCore, layers: StoreLayers, uid: int = 0, gid: int = 0) -> None:
        self.files = files
        self.layers = layers
        self._uid, self._gid = uid, gid
        self._created = int(time.time())
        self.root = StoreNode(ROOT_INODE, "root", "", None)
        self._nodes: dict[int, StoreNode] = {ROOT_INODE: self.root}
        self._next_ino = STORE_INO_BASE
        self._diffs: dict[Key, str] = {}  # entry -> its FSCore layer name
        # diff directories' inodes -> lookups the kernel holds (FUSE's nlookup): a layer whose
        # diff the kernel still knows (an overlay over it, a process inside) is never let go
        # of for being idle, whatever the use counts say
        self._diff_keys: dict[int, Key] = {}
        self._kernel_refs: dict[int, int] = {}

    # -- nodes -----------------------------------------------------------------------------

    def find(self, ino: int) -> StoreNode | None:
        return self._nodes.get(ino)

    def node(self, ino: int) -> StoreNode:
        found = self._nodes.get(ino)
        if found is None:
            raise _errno(errno.ENOENT, f"no store inode {ino}")
        return found

    def _child(self, parent: StoreNode, name: str, kind: StoreKind, ref_name: str = "",
               ref: Reference | None = None, digest: str = "") -> StoreNode:
        child = parent.children.get(name)
        if child is None:
            child = StoreNode(self._next_ino, kind, name, parent, ref_name, ref, digest)
            self._next_ino += 1
            self._nodes[child.ino] = child
            parent.children[name] = child
        return child

    # -- operations ------------------------------------------------------------------------

    async def lookup(self, parent: int, name: str) -> StoreNode | Node:
        node = self.node(parent)
        if node.kind == "root":
            ref_name, ref = ref_of_dirname(name)
            return self._child(node, name, "image", ref_name, ref)
        if node.kind == "image":
            digest = parse_layer_digest(name)
            return self._child(node, name, "layer", node.ref_name, node.ref, digest)
        if node.kind != "layer":
            raise _errno(errno.ENOTDIR, f"store inode {parent} is not a directory")
        if name == DIFF:
            return await self._diff(node)
        if name in (INFO, BLOB):
            entry = await self._entry(node)
            child = self._child(node, name, "info" if name == INFO else "blob", node.ref_name,
                                node.ref, node.digest)
            child.info = entry.info
            return child
        raise _errno(errno.ENOENT, f"no {name!r} in a layer directory")  # "use" included

    async def _entry(self, node: StoreNode) -> StoreLayer:
        assert node.ref is not None
        return await self.layers.entry(node.ref_name, node.ref, node.digest)

    async def _diff(self, node: StoreNode) -> Node:
        entry = await self._entry(node)
        layer = await self.layers.layer(entry)
        name = self._diffs.get(entry.key)
        if name is None:
            assert node.parent is not None
            name = self._diffs[entry.key] = self.files.add_layer(
                layer, f"{node.parent.name}@{node.digest}")
        root = self.files.lookup(ROOT_INODE, name)
        self.note_lookup(root.ino, entry.key)
        return root

    def note_lookup(self, ino: int, key: Key | None = None) -> None:
        """The kernel got ``ino`` once more (a lookup or readdirplus reply); counted for the
        diff directories only."""
        if key is not None:
            self._diff_keys[ino] = key
        if ino in self._diff_keys:
            self._kernel_refs[ino] = self._kernel_refs.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        left = self._kernel_refs.get(ino, 0) - count
        if left > 0:
            self._kernel_refs[ino] = left
        else:
            self._kernel_refs.pop(ino, None)

    def _held_by_kernel(self, key: Key) -> bool:
        return any(k == key for ino, k in self._diff_keys.items() if ino in self._kernel_refs)

    def getattr(self, ino: int) -> Attr:
        node = self.node(ino)
        if node.kind in ("info", "blob"):
            assert node.info is not None
            size = len(node.info.info_json()) if node.kind == "info" else node.info.size
            return Attr(ino, FILE_MODE, 1, self._uid, self._gid, size=size, mtime=self._created)
        nlink = 2 + sum(1 for c in node.children.values() if c.kind not in ("info", "blob"))
        return Attr(ino, DIR_MODE, nlink, self._uid, self._gid, size=DIR_SIZE,
                    mtime=self._created)

    def listing(self, ino: int) -> dict[str, StoreNode | Node]:
        """What has been looked up (and, in a layer directory, ``diff`` while it is served)."""
        node = self.node(ino)
        if node.kind in ("info", "blob"):
            raise _errno(errno.ENOTDIR, f"store inode {ino} is not a directory")
        shown: dict[str, StoreNode | Node] = dict(node.children)
        if node.kind == "layer":
            name = self._diffs.get(node.key)
            if name is not None:
                shown[DIFF] = self.files.lookup(ROOT_INODE, name)
        return dict(sorted(shown.items()))

    def parent(self, ino: int) -> StoreNode:
        node = self.node(ino)
        return node.parent or self.root

    def check_open(self, ino: int) -> StoreNode:
        node = self.node(ino)
        if node.kind not in ("info", "blob"):
            raise _errno(errno.EISDIR, f"store inode {ino} is a directory")
        return node

    async def read(self, node: StoreNode, offset: int, size: int) -> bytes:
        assert node.info is not None and node.ref is not None
        if node.kind == "info":
            return node.info.info_json()[offset : offset + size]
        end = min(offset + size, node.info.size)
        if end <= offset:
            return b""
        entry = await self.layers.entry(node.ref_name, node.ref, node.digest)
        data = await self.layers.read_blob(entry, offset, end - offset)
        if len(data) != end - offset:
            raise _errno(errno.EIO, f"blob of {node.digest}: {len(data)} of {end - offset} bytes")
        return data

    async def create(self, parent: int, name: str) -> None:
        """Podman creating ``use``: one use more. Always ENOENT (the file never exists)."""
        node = self.node(parent)
        if node.kind != "layer" or name != USE:
            raise _errno(errno.EROFS, "the store is read-only")
        await self.layers.use(await self._entry(node))
        raise _errno(errno.ENOENT, "use counted")

    async def rmdir(self, parent: int, name: str) -> None:
        """Podman removing a layer directory: one use fewer. Always ENOENT, as the reference."""
        node = self.node(parent)
        if node.kind != "image":
            raise _errno(errno.EROFS, "the store is read-only")
        digest = parse_layer_digest(name)
        if await self.layers.release((node.ref_name, digest)) == 0:
            self._drop_diff((node.ref_name, digest))
        raise _errno(errno.ENOENT, "release counted")

    async def expire(self) -> None:
        """Let go of the layers looked up but never used and no longer known to the kernel
        (see StoreLayers.expire)."""
        for key in await self.layers.expire(keep=self._held_by_kernel):
            self._drop_diff(key)

    def _drop_diff(self, key: Key) -> None:
        if self.layers.find(key) is not None:
            return  # looked up again meanwhile
        name = self._diffs.pop(key, None)
        if name is not None:
            self.files.remove_layer(name)
        for ino in [i for i, k in self._diff_keys.items() if k == key]:
            if ino not in self._kernel_refs:
                del self._diff_keys[ino]

    def served(self) -> list[tuple[str, LayerView]]:
        """(``<image>/<digest>/diff``, layer) of every layer served."""
        return [(name.replace("@", "/", 1) + "/" + DIFF, view)
                for name, view in self.files.named_layers() if "@" in name]
