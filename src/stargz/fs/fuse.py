"""The thin pyfuse3 adapter: kernel requests in, FSCore calls, replies (or one errno) out.

Layers never change, so the kernel is told to cache everything for long: entries and attributes
for an hour, file pages kept across opens. The mount root and the state files do change (layers
come and go, fetch progress grows): those are never cached. For the same reason a layer's
directory listings are kept built for a while (bounded): the kernel reads a directory
in several readdir calls and can not cache readdir through pyfuse3 (opendir has no
cache_readdir), so every walk asks again.
"""

from __future__ import annotations

import errno
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
from prometheus_client import Counter

from stargz.fs.errmap import errno_for
from stargz.fs.metrics import FSMetrics
from stargz.fs.tree import Attr, FSCore, Node

LONG_TIMEOUT = 3600.0  # seconds: layer contents are immutable
# Directory listings kept built (a reply holds ~300 bytes per entry): enough for the
# directories a walk has open at once, not a copy of a big layer.
LISTED_ENTRIES_KEPT = 16384
T = TypeVar("T")
Listing = list[tuple[bytes, pyfuse3.EntryAttributes]]  # readdir's (name, attributes), dots first


class StargzOperations(pyfuse3.Operations):
    """pyfuse3 operations over an :class:`FSCore`; read-only."""

    enable_writeback_cache = False

    def __init__(self, core: FSCore, metrics: FSMetrics) -> None:
        super().__init__()
        self.core = core
        self.metrics = metrics
        self._handles: dict[int, Node] = {}
        self._next_fh = 1
        # labels() costs a lock and a tuple lookup per call: keep each child counter
        self._op_counters: dict[tuple[str, str], Counter] = {}
        self._listings: OrderedDict[int, Listing] = OrderedDict()  # by inode, oldest first
        self._listed = 0  # entries in self._listings

    # -- plumbing -------------------------------------------------------------------------

    def _label(self, ino: int) -> str:
        return self.core.layer_label(ino)

    def _note_use(self, ino: int) -> str:
        """The layer label of ``ino``; tells a lazy layer its contents are in use (its
        background fetch steps aside), but not for the state files, which pollers read."""
        node = self.core.find(ino)
        if node is None or node.layer is None:
            return ""
        if node.immutable:
            note = getattr(node.layer.view, "note_use", None)
            if note is not None:
                note()
        return node.layer.view.digest

    async def _call(self, op: str, ino: int, fn: Callable[[], Awaitable[T]]) -> T:
        label = self._note_use(ino)
        counter = self._op_counters.get((label, op))
        if counter is None:
            counter = self._op_counters[label, op] = self.metrics.operations.labels(label, op)
        counter.inc()
        try:
            return await fn()
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            code = errno_for(exc)
            self.metrics.errors.labels(label, str(code)).inc()
            raise pyfuse3.FUSEError(code) from exc

    def _entry(self, attr: Attr, node: Node) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = pyfuse3.InodeT(attr.ino)
        out.st_mode = pyfuse3.ModeT(attr.mode)
        out.st_nlink = attr.nlink
        out.st_uid = attr.uid
        out.st_gid = attr.gid
        out.st_rdev = attr.rdev
        out.st_size = attr.size
        out.st_blksize = 4096
        out.st_blocks = attr.blocks
        ns = attr.mtime * 1_000_000_000
        out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = ns
        volatile = node.kind in ("root", "state_dir", "state_file")
        out.attr_timeout = 0.0 if volatile else LONG_TIMEOUT
        out.entry_timeout = 0.0 if node.kind == "state_file" else LONG_TIMEOUT
        if node.kind == "root" or (node.layer is not None and node.ino == node.layer.root.ino):
            out.entry_timeout = 0.0  # a layer directory may be removed
        return out

    def _attr_of(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._entry(self.core.attr_of(node), node)

    def _listing_of(self, ino: int) -> Listing:
        """The kernel reads a directory in several readdir calls (a buffer each): the
        listing is built once and kept for a while, within a bound on the entries kept."""
        cached = self._listings.get(ino)
        if cached is not None:
            self._listings.move_to_end(ino)
            return cached
        node = self.core.node(ino)
        children = [(".", node), ("..", self.core.parent(ino)), *self.core.readdir(ino)]
        listing = [(os.fsencode(name), self._attr_of(child)) for name, child in children]
        if node.immutable:
            self._listings[ino] = listing
            self._listed += len(listing)
            while self._listed > LISTED_ENTRIES_KEPT and len(self._listings) > 1:
                self._listed -= len(self._listings.popitem(last=False)[1])
        return listing

    # -- operations -----------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async def run() -> pyfuse3.EntryAttributes:
            try:
                return self._attr_of(self.core.lookup(parent_inode, os.fsdecode(name)))
            except OSError as err:
                parent = self.core.find(parent_inode)
                if err.errno != errno.ENOENT or parent is None or not parent.immutable:
                    raise
            # A name missing from a layer stays missing: inode 0 lets the kernel remember
            # that (python's import probing asks for many such names, every start).
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = pyfuse3.InodeT(0)
            missing.entry_timeout = LONG_TIMEOUT
            return missing

        return await self._call("lookup", parent_inode, run)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async def run() -> pyfuse3.EntryAttributes:
            return self._attr_of(self.core.node(inode))

        return await self._call("getattr", inode, run)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        async def run() -> bytes:
            return self.core.readlink(inode)

        return await self._call("readlink", inode, run)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        async def run() -> pyfuse3.FileHandleT:
            self.core.check_directory(inode)  # ENOTDIR here rather than on the first readdir
            return pyfuse3.FileHandleT(inode)

        return await self._call("opendir", inode, run)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        async def run() -> None:
            started = time.perf_counter()
            listing = self._listing_of(fh)
            for index in range(start_id, len(listing)):
                name, attr = listing[index]
                if not pyfuse3.readdir_reply(token, name, attr, index + 1):
                    break
            self.metrics.readdir_done(self._label(fh), time.perf_counter() - started)

        await self._call("readdir", fh, run)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        async def run() -> pyfuse3.FileInfo:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                raise OSError(errno.EROFS, "read-only filesystem")
            node = self.core.check_open(inode)
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = node
            if node.kind == "state_file":  # changes as the layer fills: no page cache
                return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=True)
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

        return await self._call("open", inode, run)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        node = self._handles.get(fh)
        ino = node.ino if node is not None else 0

        async def run() -> bytes:
            if node is None:
                raise OSError(errno.EBADF, f"no open file handle {fh}")
            started = time.perf_counter()
            data = await self.core.read(node, off, size)
            self.metrics.read_done(self._label(ino), time.perf_counter() - started, len(data))
            return data

        return await self._call("read", ino, run)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self._handles.pop(fh, None)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        async def run() -> bytes:
            return self.core.getxattr(inode, name)

        return await self._call("getxattr", inode, run)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> list[pyfuse3.XAttrNameT]:
        async def run() -> list[pyfuse3.XAttrNameT]:
            return [pyfuse3.XAttrNameT(n) for n in self.core.listxattr(inode)]

        return await self._call("listxattr", inode, run)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        async def run() -> pyfuse3.StatvfsData:
            info = self.core.statfs()
            out = pyfuse3.StatvfsData()
            out.f_bsize = out.f_frsize = info.block_size
            out.f_blocks = info.blocks
            out.f_bfree = out.f_bavail = 0
            out.f_files = info.files
            out.f_ffree = out.f_favail = 0
            out.f_namemax = info.name_max
            return out

        return await self._call("statfs", pyfuse3.ROOT_INODE, run)
