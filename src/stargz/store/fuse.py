"""The thin pyfuse3 adapter of the store: the store's own inodes go to :class:`StoreCore`, the
layers' files (inside each ``diff``) to the filesystem's usual operations over FSCore.

The mount is not read-only: podman creates ``use`` files and removes layer directories to count
its uses (each answered ENOENT); every other change is refused with EROFS.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pyfuse3

from stargz.fs.fuse import Listing, StargzOperations
from stargz.fs.metrics import FSMetrics
from stargz.fs.mount import LazyFS
from stargz.fs.tree import Attr, Node
from stargz.fs.view import LayerView
from stargz.store.core import StoreCore, StoreNode
from stargz.store.layers import StoreLayers

STORE_TIMEOUT = 1.0  # seconds, the reference store's attr and entry timeouts


class StoreOperations(StargzOperations):
    def __init__(self, store: StoreCore, metrics: FSMetrics) -> None:
        super().__init__(store.files, metrics)
        self.store = store
        self._store_handles: dict[int, StoreNode] = {}

    def _store_entry(self, node: StoreNode) -> pyfuse3.EntryAttributes:
        attr: Attr = self.store.getattr(node.ino)
        out = pyfuse3.EntryAttributes()
        out.st_ino = pyfuse3.InodeT(attr.ino)
        out.st_mode = pyfuse3.ModeT(attr.mode)
        out.st_nlink = attr.nlink
        out.st_uid, out.st_gid = attr.uid, attr.gid
        out.st_size = attr.size
        out.st_blksize = 4096
        out.st_blocks = attr.blocks
        out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = attr.mtime * 1_000_000_000
        timeout = 0.0 if node.kind == "root" else STORE_TIMEOUT
        out.attr_timeout = out.entry_timeout = timeout
        return out

    def _attr_of(self, node: Node) -> pyfuse3.EntryAttributes:
        if isinstance(node, StoreNode):
            return self._store_entry(node)
        return super()._attr_of(node)

    def _listing_of(self, ino: int) -> Listing:
        node = self.store.find(ino)
        if node is None:
            return super()._listing_of(ino)
        children = [(".", node), ("..", self.store.parent(ino)),
                    *self.store.listing(ino).items()]
        return [(os.fsencode(name), self._attr_of(cast(Node, child)))
                for name, child in children]

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if self.store.find(fh) is None:
            return await super().readdir(fh, start_id, token)

        async def run() -> None:
            listing = self._listing_of(fh)
            for index in range(start_id, len(listing)):
                name, attr = listing[index]
                if not pyfuse3.readdir_reply(token, name, attr, index + 1):
                    break
                if index >= 2:  # readdirplus: the kernel now holds the entry (not . and ..)
                    self.store.note_lookup(attr.st_ino)

        return await self._call("readdir", fh, run)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.store.forget(ino, count)

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self.store.find(parent_inode) is None:
            return await super().lookup(parent_inode, name, ctx)

        async def run() -> pyfuse3.EntryAttributes:
            found = await self.store.lookup(parent_inode, os.fsdecode(name))
            return self._attr_of(cast(Node, found))

        return await self._call("lookup", parent_inode, run)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.store.find(inode)
        if node is None:
            return await super().getattr(inode, ctx)

        async def run() -> pyfuse3.EntryAttributes:
            return self._store_entry(node)

        return await self._call("getattr", inode, run)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if self.store.find(inode) is None:
            return await super().opendir(inode, ctx)

        async def run() -> pyfuse3.FileHandleT:
            self.store.listing(inode)  # ENOTDIR for info and blob
            return pyfuse3.FileHandleT(inode)

        return await self._call("opendir", inode, run)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if self.store.find(inode) is None:
            return await super().open(inode, flags, ctx)

        async def run() -> pyfuse3.FileInfo:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                raise OSError(errno.EROFS, "read-only filesystem")
            node = self.store.check_open(inode)
            fh = self._next_fh
            self._next_fh += 1
            self._store_handles[fh] = node
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

        return await self._call("open", inode, run)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        node = self._store_handles.get(fh)
        if node is None:
            return await super().read(fh, off, size)

        async def run() -> bytes:
            return await self.store.read(node, off, size)

        return await self._call("read", node.ino, run)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        if self._store_handles.pop(fh, None) is None:
            await super().release(fh)

    async def create(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async def run() -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            if self.store.find(parent_inode) is None:
                raise OSError(errno.EROFS, "read-only filesystem")
            await self.store.create(parent_inode, os.fsdecode(name))
            raise OSError(errno.EIO, "create answered nothing")  # create always raises

        return await self._call("create", parent_inode, run)

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        async def run() -> None:
            if self.store.find(parent_inode) is None:
                raise OSError(errno.EROFS, "read-only filesystem")
            await self.store.rmdir(parent_inode, os.fsdecode(name))

        await self._call("rmdir", parent_inode, run)

    # Every other change: refused (the layers are immutable; podman only counts uses).

    async def mkdir(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setattr(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)


class StoreFS(LazyFS):
    """The store's one FUSE mount: LazyFS's lifecycle, the store's operations, writable."""

    def __init__(self, mountpoint: str | Path, layers: StoreLayers,
                 metrics_address: str | None = None) -> None:
        super().__init__(mountpoint, metrics_address)
        self.options = tuple(o for o in self.options if o != "ro")
        self.store = StoreCore(self.core, layers, uid=os.getuid(), gid=os.getgid())
        self.metrics = FSMetrics(self._served)
        self.operations = StoreOperations(self.store, self.metrics)

    def _served(self) -> list[tuple[str, LayerView]]:
        return [(str(self.mountpoint / path), view) for path, view in self.store.served()]
