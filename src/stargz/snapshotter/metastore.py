"""Snapshot metadata in SQLite: what containerd's snapshots/storage keeps in bolt, a row each.

Every public method of :class:`Transaction` behaves like the function of the same role in
containerd's ``snapshots/storage`` package (same checks, same order, same error kinds), so the
service answers exactly as containerd's overlayfs snapshotter would. A snapshot's ``id`` is its
directory name under ``<root>/snapshots``; ids come from an AUTOINCREMENT column so they are never
reused, which lets Cleanup tell stale directories from live ones.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stargz.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RuntimeIntegrationError,
)
from stargz.snapshotter.filters import Filter

MAX_LABEL_SIZE = 4096  # containerd's labels.Validate: len(key) + len(value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    parent TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    inodes INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    remote_dir TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent);
"""


class Kind(enum.Enum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Info:
    name: str
    parent: str
    kind: Kind
    labels: dict[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0

    def field_value(self, fieldpath: Sequence[str]) -> tuple[str, bool]:
        """containerd's snapshot filter adaptor: kind, name, parent, labels.<key>."""
        if not fieldpath:
            return "", False
        head = fieldpath[0]
        if head == "kind":
            return self.kind.value, True
        if head == "name":
            return self.name, True
        if head == "parent":
            return self.parent, True
        if head == "labels" and self.labels:
            key = ".".join(fieldpath[1:])
            return self.labels.get(key, ""), key in self.labels
        return "", False


@dataclass(frozen=True)
class Usage:
    size: int = 0
    inodes: int = 0


@dataclass(frozen=True)
class Layer:
    """One snapshot of a parent chain: its directory id and, if lazily mounted, its lowerdir."""

    id: str
    remote_dir: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """What mounts are computed from: the snapshot's own id and its parents, nearest first."""

    id: str
    kind: Kind
    parents: tuple[Layer, ...] = ()


@dataclass(frozen=True)
class Record:
    id: str
    info: Info
    usage: Usage
    remote_dir: str | None


def validate_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgumentError(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), "
                f"key: {key[:10]}"
            )


def _require_name(what: str, value: str) -> None:
    if not value:
        raise InvalidArgumentError(f"snapshot {what} must not be empty")


def _stored_labels(labels: Mapping[str, str]) -> str:
    # containerd never stores empty-valued labels: setting one to "" deletes it
    return json.dumps({k: v for k, v in sorted(labels.items()) if v != ""})


class MetaStore:
    """The SQLite file; hand out one :class:`Transaction` per snapshotter operation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # autocommit mode: transactions are begun and ended explicitly below
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise RuntimeIntegrationError(f"metadata {path} is unusable: {err}") from None

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Transaction]:
        """Commit when the block ends normally; roll back when it raises."""
        self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield Transaction(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _row(self, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        return row

    def _require(self, key: str) -> sqlite3.Row:
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"snapshot {key!r} does not exist")
        return row

    def get(self, key: str) -> Record:
        """storage.GetInfo: id, info and stored usage of any snapshot."""
        return _record(self._require(key))

    def find(self, key: str) -> Record | None:
        row = self._row(key)
        return None if row is None else _record(row)

    def get_snapshot(self, key: str) -> Snapshot:
        """storage.GetSnapshot: only active and view snapshots have mounts."""
        row = self._require(key)
        kind = Kind(row["kind"])
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPreconditionError(f"requested snapshot {key!r} not active or view")
        return Snapshot(str(row["id"]), kind, self._parents(row["parent"]))

    def _parents(self, parent: str | None) -> tuple[Layer, ...]:
        chain: list[Layer] = []
        seen: set[str] = set()
        while parent:
            row = self._row(parent)
            if row is None or parent in seen:
                raise NotFoundError(f"parent {parent!r} does not exist")
            seen.add(parent)
            chain.append(Layer(str(row["id"]), row["remote_dir"]))
            parent = row["parent"]
        return tuple(chain)

    def create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> Snapshot:
        """storage.CreateSnapshot: a new active or view snapshot on a committed parent."""
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgumentError(f"snapshot type {kind.value} invalid")
        _require_name("key", key)
        validate_labels(labels)
        if parent:
            parent_row = self._row(parent)
            if parent_row is None:
                raise NotFoundError(f"missing parent {parent!r}")
            if Kind(parent_row["kind"]) is not Kind.COMMITTED:
                raise InvalidArgumentError(f"parent {parent!r} is not committed snapshot")
        if self._row(key) is not None:
            raise AlreadyExistsError(f"snapshot {key!r} already exists")
        now = time.time_ns()
        cursor = self._db.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created_ns, updated_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, kind.value, parent or None, _stored_labels(labels), now, now),
        )
        return Snapshot(str(cursor.lastrowid), kind, self._parents(parent or None))

    def commit_active(
        self,
        key: str,
        name: str,
        usage: Usage,
        labels: Mapping[str, str],
        remote_dir: str | None = None,
    ) -> str:
        """storage.CommitActive: the active snapshot becomes committed under ``name``.

        The id (so the directory) is kept; labels are replaced, not inherited."""
        _require_name("name", name)
        validate_labels(labels)
        if self._row(name) is not None:
            raise AlreadyExistsError(f"committed snapshot {name!r} already exists")
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"failed to get active snapshot {key!r}")
        if Kind(row["kind"]) is not Kind.ACTIVE:
            raise FailedPreconditionError(f"snapshot {key!r} is not active")
        now = time.time_ns()
        self._db.execute(
            "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created_ns = ?,"
            " updated_ns = ?, inodes = ?, size = ?, remote_dir = ? WHERE id = ?",
            (
                name,
                _stored_labels(labels),
                now,
                now,
                usage.inodes,
                usage.size,
                remote_dir,
                row["id"],
            ),
        )
        return str(row["id"])

    def remove(self, key: str) -> Record:
        """storage.Remove: refuses while any snapshot has this one as parent."""
        row = self._require(key)
        child = self._db.execute(
            "SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,)
        ).fetchone()
        if child is not None:
            raise FailedPreconditionError(f"cannot remove snapshot {key!r} with child")
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        return _record(row)

    def update(self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str]) -> Info:
        """storage.UpdateInfo: only labels are mutable; no fieldpaths means all labels."""
        current = self._require(name)
        updated = dict(json.loads(current["labels"]))
        if not fieldpaths:
            updated = dict(labels)
        for path in fieldpaths:
            if path.startswith("labels."):
                label = path.removeprefix("labels.")
                updated[label] = labels.get(label, "")
            elif path == "labels":
                updated = dict(labels)
            else:
                raise InvalidArgumentError(f"cannot update {path!r} field on snapshot {name!r}")
        validate_labels(updated)
        self._db.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
            (_stored_labels(updated), time.time_ns(), current["id"]),
        )
        return self.get(name).info

    def set_remote_dir(self, key: str, remote_dir: str) -> None:
        self._db.execute("UPDATE snapshots SET remote_dir = ? WHERE key = ?", (remote_dir, key))

    def walk(self, match: Filter | None = None) -> list[Record]:
        """storage.WalkInfo: every snapshot the filter matches, in key order."""
        rows = self._db.execute("SELECT * FROM snapshots ORDER BY key").fetchall()
        records = [_record(row) for row in rows]
        if match is None:
            return records
        return [r for r in records if match.matches(r.info.field_value)]

    def ids(self) -> set[str]:
        """storage.IDMap's keys: the directory names that are in use."""
        return {str(row[0]) for row in self._db.execute("SELECT id FROM snapshots")}


def _record(row: sqlite3.Row) -> Record:
    info = Info(
        name=row["key"],
        parent=row["parent"] or "",
        kind=Kind(row["kind"]),
        labels=dict(json.loads(row["labels"])),
        created_ns=row["created_ns"],
        updated_ns=row["updated_ns"],
    )
    return Record(str(row["id"]), info, Usage(row["size"], row["inodes"]), row["remote_dir"])
