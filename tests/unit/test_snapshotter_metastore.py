"""The SQLite metadata store: containerd's snapshots/storage rules, kept across reopening."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from stargz.snapshotter.filters import parse_filters
from stargz.snapshotter.metastore import Kind, Layer, MetaStore, Usage


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    opened = MetaStore(tmp_path / "metadata.sqlite")
    yield opened
    opened.close()


def test_create_commit_chain_and_reopen(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "m.sqlite")
    with store.transaction(write=True) as tx:
        base = tx.create(Kind.ACTIVE, "k1", "", {"a": "1"})
        tx.commit_active("k1", "base", Usage(size=4096, inodes=2), {"c": "2"})
        top = tx.create(Kind.ACTIVE, "k2", "base", {})
        tx.commit_active("k2", "top", Usage(), {}, remote_dir="/lazy/top")
        view = tx.create(Kind.VIEW, "v", "top", {})
    store.close()

    reopened = MetaStore(tmp_path / "m.sqlite")
    with reopened.transaction() as tx:
        committed = tx.get("base")
        assert committed.id == base.id  # commit keeps the directory id
        assert committed.info.kind is Kind.COMMITTED
        assert committed.info.labels == {"c": "2"}  # commit labels replace, never inherit
        assert committed.usage == Usage(size=4096, inodes=2)
        assert tx.get("top").remote_dir == "/lazy/top"
        assert tx.get_snapshot("v") == type(view)(
            view.id, Kind.VIEW, (Layer(top.id, "/lazy/top"), Layer(base.id, None))
        )
        with pytest.raises(NotFoundError):
            tx.get("k1")  # the active key is gone once committed
    reopened.close()


def test_ids_are_never_reused(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        first = tx.create(Kind.ACTIVE, "a", "", {}).id
        tx.remove("a")
        second = tx.create(Kind.ACTIVE, "a", "", {}).id
    assert int(second) > int(first)


def test_create_errors_in_containerd_order(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "active", "", {})
        with pytest.raises(NotFoundError, match="missing parent"):
            tx.create(Kind.ACTIVE, "x", "nope", {})
        with pytest.raises(InvalidArgumentError, match="not committed"):
            tx.create(Kind.ACTIVE, "x", "active", {})
        with pytest.raises(AlreadyExistsError):
            tx.create(Kind.VIEW, "active", "", {})
        with pytest.raises(InvalidArgumentError):
            tx.create(Kind.COMMITTED, "x", "", {})
        with pytest.raises(InvalidArgumentError, match="maximum size"):
            tx.create(Kind.ACTIVE, "x", "", {"k": "v" * 4096})


def test_commit_errors(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "a", "", {})
        tx.create(Kind.VIEW, "v", "", {})
        with pytest.raises(AlreadyExistsError):
            tx.commit_active("a", "v", Usage(), {})
        with pytest.raises(NotFoundError):
            tx.commit_active("missing", "name", Usage(), {})
        with pytest.raises(FailedPreconditionError, match="not active"):
            tx.commit_active("v", "name", Usage(), {})


def test_remove_refuses_with_children_and_mounts_refuse_committed(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "a", "", {})
        tx.commit_active("a", "base", Usage(), {})
        tx.create(Kind.VIEW, "v", "base", {})
        with pytest.raises(FailedPreconditionError, match="child"):
            tx.remove("base")
        with pytest.raises(FailedPreconditionError, match="not active or view"):
            tx.get_snapshot("base")
        tx.remove("v")
        tx.remove("base")
        with pytest.raises(NotFoundError):
            tx.remove("base")
        assert tx.ids() == set()


def test_failed_transaction_rolls_back(store: MetaStore) -> None:
    with pytest.raises(AlreadyExistsError), store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "a", "", {})
        tx.create(Kind.ACTIVE, "a", "", {})
    with store.transaction() as tx:
        assert tx.walk() == []


def test_update_labels_like_containerd(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "a", "", {"keep": "1", "drop": "2"})
        before = tx.get("a").info
        info = tx.update("a", {"new": "3", "keep": "ignored"}, ["labels.new"])
        assert info.labels == {"keep": "1", "drop": "2", "new": "3"}
        info = tx.update("a", {}, ["labels.drop"])  # absent in the request: deleted
        assert info.labels == {"keep": "1", "new": "3"}
        info = tx.update("a", {"only": "x"}, [])  # no mask: every label replaced
        assert info.labels == {"only": "x"}
        assert info.created_ns == before.created_ns and info.updated_ns >= before.updated_ns
        with pytest.raises(InvalidArgumentError, match="cannot update"):
            tx.update("a", {}, ["parent"])
        with pytest.raises(NotFoundError):
            tx.update("missing", {}, [])


def test_walk_is_in_key_order_and_filtered(store: MetaStore) -> None:
    with store.transaction(write=True) as tx:
        for key in ("c", "a", "b"):
            tx.create(Kind.ACTIVE, key, "", {"name": key})
        tx.commit_active("b", "b-done", Usage(), {})
        assert [r.info.name for r in tx.walk()] == ["a", "b-done", "c"]
        match = parse_filters(["kind==active"])
        assert [r.info.name for r in tx.walk(match)] == ["a", "c"]
