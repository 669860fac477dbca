"""The snapshotter: containerd's overlayfs snapshotter, plus a hook for lazily mounted layers.

Ordinary snapshots behave exactly as containerd's overlayfs snapshotter's do (same layout, same
mounts, same checks and error kinds). A Prepare that carries remote-snapshot labels first asks
the :class:`RemoteLayers` hook for the layer; see :meth:`Snapshotter.prepare`.

Concurrency: everything runs on one asyncio loop. Metadata transactions never span an ``await``,
so each operation's reads and writes are atomic; only slow file work (disk usage, removing trees)
and the hook's own work run while other requests proceed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from stargz.errors import AlreadyExistsError, RuntimeIntegrationError, StargzError
from stargz.killpoints import kill_point
from stargz.snapshotter.fallbacks import FallbackLog, reason_of_error
from stargz.snapshotter.filters import parse_filters
from stargz.snapshotter.layout import Layout, Mount, disk_usage, remove_tree
from stargz.snapshotter.metastore import Info, Kind, MetaStore, Snapshot, Transaction, Usage
from stargz.snapshotter.remote import (
    LABEL_REMOTE,
    LABEL_SNAPSHOT_REF,
    REMOTE_LABEL_VALUE,
    NoRemoteLayers,
    RemoteLayers,
    wants_remote,
)

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.sqlite"
LOCK_FILE = "lock"


class Snapshotter:
    def __init__(self, root: Path, remote: RemoteLayers | None = None) -> None:
        self.layout = Layout(root)
        self.layout.create_dirs()
        self._lock = _lock_root(root)
        try:
            self.store = MetaStore(root / METADATA_FILE)
        except BaseException:
            os.close(self._lock)
            raise
        self.remote: RemoteLayers = remote if remote is not None else NoRemoteLayers()
        self.fallbacks = FallbackLog(root)  # why layers were downloaded in full
        # ids of remote snapshots the hook could not mount again after a restart
        self._unavailable: set[str] = set()

    def close(self) -> None:
        self.store.close()
        os.close(self._lock)  # closing the descriptor drops the flock

    async def restore_remote(self) -> None:
        """Hand every committed remote snapshot back to the hook to be mounted again, then
        remove the directories no snapshot owns (a crash's leftovers)."""
        with self.store.transaction() as tx:
            remote = [r for r in tx.walk() if r.remote_dir is not None]
        for record in remote:
            assert record.remote_dir is not None
            name = record.info.name
            try:
                directory = await self.remote.restore(name, record.info.labels, record.remote_dir)
            except Exception as err:  # a hook failure must not keep the daemon from serving
                log.warning("remote snapshot %s can not be restored: %s", name, err)
                directory = None
            if directory is not None and not _usable_lowerdir(directory):
                log.error(
                    "remote snapshot %s: hook gave %r, not an absolute directory", name, directory
                )
                await self._release(name, directory)
                directory = None
            if directory is None:
                self._unavailable.add(record.id)
                continue
            if directory != record.remote_dir:
                with self.store.transaction(write=True) as tx:
                    tx.set_remote_dir(name, directory)
            log.info("restored remote snapshot %s at %s", name, directory)
        await self.cleanup()  # what a crash left: half-created or half-removed directories

    # --- reads -------------------------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        with self.store.transaction() as tx:
            return tx.get(key).info

    async def usage(self, key: str) -> Usage:
        """Committed snapshots report what was measured at commit; active ones are walked now."""
        with self.store.transaction() as tx:
            record = tx.get(key)
        if record.info.kind is Kind.ACTIVE:
            return await asyncio.to_thread(disk_usage, self.layout.upper(record.id))
        return record.usage

    async def mounts(self, key: str) -> list[Mount]:
        with self.store.transaction() as tx:
            snapshot = tx.get_snapshot(key)
        self._check_available(snapshot)
        return self.layout.mounts(snapshot)

    async def walk(self, filters: Sequence[str]) -> list[Info]:
        match = parse_filters(filters)
        with self.store.transaction() as tx:
            return [record.info for record in tx.walk(match)]

    # --- writes ------------------------------------------------------------------------------

    async def update(self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str]) -> Info:
        with self.store.transaction(write=True) as tx:
            return tx.update(name, labels, fieldpaths)

    async def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        snapshot = self._create(Kind.VIEW, key, parent, labels)
        await self._check_remote_parents(snapshot, parent)
        return self.layout.mounts(snapshot)

    async def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        """An active snapshot; or, for a remote-snapshot request the hook can serve, the layer
        committed under the ``.ref`` name and AlreadyExistsError (the containerd handshake).
        An ordinary snapshot (a container's rootfs) on remote layers returns once their
        prefetch is done (see :meth:`_check_remote_parents`)."""
        snapshot = self._create(Kind.ACTIVE, key, parent, labels)
        kill_point("prepare-created")
        if not wants_remote(labels):
            await self._check_remote_parents(snapshot, parent)
        elif await self._prepare_remote(key, parent, labels):
            raise AlreadyExistsError(
                f"target snapshot {labels[LABEL_SNAPSHOT_REF]!r} already exists"
            )
        return self.layout.mounts(snapshot)

    async def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        with self.store.transaction() as tx:
            record = tx.get(key)
        usage = await asyncio.to_thread(disk_usage, self.layout.upper(record.id))
        kill_point("commit-measured")
        with self.store.transaction(write=True) as tx:
            tx.commit_active(key, name, usage, labels)

    async def remove(self, key: str) -> None:
        """Forget the snapshot now; its directory (and any other stale one) goes right after."""
        with self.store.transaction(write=True) as tx:
            record = tx.remove(key)
            stale = self.layout.stale_dirs(tx.ids())
        kill_point("remove-forgotten")
        if record.remote_dir is not None:
            self._unavailable.discard(record.id)
            await self._release(record.info.name, record.remote_dir)
        await asyncio.to_thread(_remove_all, stale)

    async def cleanup(self) -> None:
        """Remove directories no snapshot owns (left by crashes or failed creates)."""
        with self.store.transaction(write=True) as tx:
            stale = self.layout.stale_dirs(tx.ids())
        await asyncio.to_thread(_remove_all, stale)

    # --- helpers -----------------------------------------------------------------------------

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> Snapshot:
        """Directory under a temporary name, metadata row, then rename to the id: a crash at any
        point leaves at most a directory no row owns, which Cleanup removes."""
        tmp = self.layout.prepare_directory(kind)
        final: Path | None = None
        try:
            with self.store.transaction(write=True) as tx:
                snapshot = tx.create(kind, key, parent, labels)
                self._check_available(snapshot)
                if snapshot.parents:
                    self._chown_like_parent(tmp, snapshot)
                final = self.layout.snapshots / snapshot.id
                os.rename(tmp, final)
            return snapshot
        except BaseException:
            remove_tree(final if final is not None and final.exists() else tmp)
            raise

    def _chown_like_parent(self, new_dir: Path, snapshot: Snapshot) -> None:
        # the upperdir's root must match the layer below or the container's / changes owner
        nearest = snapshot.parents[0]
        st = os.stat(self.layout.lower_dir(nearest.id, nearest.remote_dir))
        os.lchown(new_dir / "fs", st.st_uid, st.st_gid)

    def _check_available(self, snapshot: Snapshot) -> None:
        for layer in snapshot.parents:
            if layer.id in self._unavailable:
                raise RuntimeIntegrationError(
                    f"layer {layer.id} is a remote snapshot that could not be mounted again "
                    "after a restart; remove the image and pull it again"
                )

    async def _check_remote_parents(self, snapshot: Snapshot, parent: str) -> None:
        """Wait for the prefetch of the remote layers below ``snapshot``, all at once (the
        reference's checkAvailability): the layers' own Prepares did not, so containerd's work
        between pull and create overlapped it. A failure only costs the wait: logged."""
        if not any(layer.remote_dir is not None for layer in snapshot.parents):
            return
        with self.store.transaction() as tx:
            records = [tx.get(name) for name in _chain_names(tx, parent)]
        remote = [(r.info.name, r.remote_dir) for r in records if r.remote_dir is not None]
        results = await asyncio.gather(
            *(self.remote.check(name, directory) for name, directory in remote),
            return_exceptions=True)
        for (name, _), result in zip(remote, results, strict=True):
            if isinstance(result, Exception):
                log.warning("remote layer %s: waiting for its prefetch failed: %s", name, result)
            elif isinstance(result, BaseException):
                raise result

    async def _prepare_remote(self, key: str, parent: str, labels: Mapping[str, str]) -> bool:
        """True when the layer is now a committed remote snapshot (the caller answers
        ALREADY_EXISTS); False to fall back to an ordinary download into ``key``."""
        target = labels[LABEL_SNAPSHOT_REF]
        with self.store.transaction() as tx:
            existing = tx.find(target)
            chain = _chain_names(tx, parent)
        if existing is not None and _serves_target(existing.info, target, parent):
            log.info("remote snapshot %s already committed; %s not needed", target, key)
            await self._discard(key)
            return True
        try:
            directory = await self.remote.prepare_remote(key, chain, labels)
        except Exception as err:  # whatever the hook hit, the client can still download the layer
            log.info("remote-snapshot-prepared=false key=%s", key)
            self.fallbacks.record(labels, reason_of_error(err), str(err))
            return False
        if directory is None:
            log.info("remote-snapshot-prepared=false key=%s: declined", key)
            self.fallbacks.declined(labels, lazy=not isinstance(self.remote, NoRemoteLayers))
            return False
        if not _usable_lowerdir(directory):
            log.error(
                "remote-snapshot-prepared=false key=%s: hook gave %r, not an absolute directory",
                key,
                directory,
            )
            await self._release(target, directory)
            self.fallbacks.record(labels, "bad_directory", f"hook gave {directory!r}")
            return False
        kill_point("prepare-mounted")
        return await self._commit_remote(key, target, labels, directory)

    async def _commit_remote(
        self, key: str, target: str, labels: Mapping[str, str], directory: str
    ) -> bool:
        committed_labels = {**labels, LABEL_REMOTE: REMOTE_LABEL_VALUE}
        try:
            with self.store.transaction(write=True) as tx:
                tx.commit_active(key, target, Usage(), committed_labels, remote_dir=directory)
        except AlreadyExistsError:
            # a concurrent Prepare committed the same target first; that one serves the layer
            await self._release(target, directory)
            await self._discard(key)
            return True
        except StargzError:
            await self._release(target, directory)
            raise
        log.info("remote-snapshot-prepared=true key=%s target=%s dir=%s", key, target, directory)
        return True

    async def _discard(self, key: str) -> None:
        try:
            await self.remove(key)
        except StargzError as err:
            log.warning("could not remove %s after a remote prepare: %s", key, err)

    async def _release(self, name: str, directory: str) -> None:
        try:
            await self.remote.release(name, directory)
        except Exception as err:  # releasing is best effort: the snapshot is already gone
            log.warning("releasing remote layer %s at %s failed: %s", name, directory, err)


def _lock_root(root: Path) -> int:
    """One daemon per root: two would hand out the same ids and remove each other's dirs."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeIntegrationError(f"another snapshotter is using {root}") from None
    return fd


def _usable_lowerdir(directory: str) -> bool:
    # overlayfs takes absolute paths only, and ":" separates lowerdirs
    return os.path.isabs(directory) and ":" not in directory and os.path.isdir(directory)


def _serves_target(info: Info, target: str, parent: str) -> bool:
    """What containerd's metadata layer will look for after ALREADY_EXISTS."""
    return (
        info.kind is Kind.COMMITTED
        and info.labels.get(LABEL_SNAPSHOT_REF) == target
        and info.parent == parent
    )


def _chain_names(tx: Transaction, parent: str) -> list[str]:
    names: list[str] = []
    while parent and parent not in names:
        names.append(parent)
        parent = tx.get(parent).info.parent
    return names


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        remove_tree(path)
