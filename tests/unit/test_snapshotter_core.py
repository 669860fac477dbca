"""The snapshotter on real temp dirs and SQLite: what containerd's overlayfs snapshotter does."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.errors import FailedPreconditionError, NotFoundError, RuntimeIntegrationError
from stargz.snapshotter.layout import Mount, disk_usage
from stargz.snapshotter.metastore import Kind, Usage
from stargz.snapshotter.snapshotter import Snapshotter

INDEX_OFF = ["index=off"] if Path("/sys/module/overlay/parameters/index").exists() else []


@pytest.fixture
def snap(tmp_path: Path) -> Iterator[Snapshotter]:
    snapshotter = Snapshotter(tmp_path / "root")
    yield snapshotter
    snapshotter.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def fs(snap: Snapshotter, key: str) -> Path:
    """The fs dir of a snapshot, found through its metadata id."""
    with snap.store.transaction() as tx:
        return snap.layout.upper(tx.get(key).id)


def commit_layer(snap: Snapshotter, name: str, parent: str, files: dict[str, bytes]) -> None:
    run(snap.prepare(f"extract-{name}", parent, {}))
    for rel, data in files.items():
        path = fs(snap, f"extract-{name}") / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    run(snap.commit(name, f"extract-{name}", {"layer": name}))


def test_lone_snapshots_are_bind_mounts(snap: Snapshotter) -> None:
    rw = run(snap.prepare("a", "", {}))
    ro = run(snap.view("v", "", {}))
    root = snap.layout.snapshots
    assert rw == [Mount("bind", str(root / "1/fs"), ("rw", "rbind"))]
    assert ro == [Mount("bind", str(root / "2/fs"), ("ro", "rbind"))]
    assert (root / "1/work").is_dir() and not (root / "2/work").exists()  # views need no workdir
    assert oct((root / "1/fs").stat().st_mode & 0o777) == oct(0o755 & ~_umask())
    assert run(snap.mounts("a")) == rw


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_overlay_for_active_with_parents_nearest_lower_first(snap: Snapshotter) -> None:
    commit_layer(snap, "base", "", {"etc/motd": b"hi\n"})
    commit_layer(snap, "top", "base", {"etc/extra": b"x"})
    mounts = run(snap.prepare("ctr", "top", {}))
    root = snap.layout.snapshots
    ctr_id = fs(snap, "ctr").parent.name
    assert mounts == [
        Mount(
            "overlay",
            "overlay",
            (
                *INDEX_OFF,
                f"workdir={root / ctr_id / 'work'}",
                f"upperdir={root / ctr_id / 'fs'}",
                f"lowerdir={fs(snap, 'top')}:{fs(snap, 'base')}",
            ),
        )
    ]


def test_views_on_parents(snap: Snapshotter) -> None:
    commit_layer(snap, "base", "", {"f": b"1"})
    one = run(snap.view("v1", "base", {}))
    assert one == [Mount("bind", str(fs(snap, "base")), ("ro", "rbind"))]
    commit_layer(snap, "top", "base", {"g": b"2"})
    two = run(snap.view("v2", "top", {}))
    assert two == [
        Mount("overlay", "overlay", (*INDEX_OFF, f"lowerdir={fs(snap, 'top')}:{fs(snap, 'base')}"))
    ]


def test_commit_records_usage_and_usage_walks_active(snap: Snapshotter) -> None:
    run(snap.prepare("a", "", {}))
    upper = fs(snap, "a")
    (upper / "data").write_bytes(b"z" * 10000)
    os.link(upper / "data", upper / "hardlink")  # one inode, counted once
    (upper / "dir").mkdir()
    live = run(snap.usage("a"))
    assert live == disk_usage(upper)
    assert isinstance(live, Usage) and live.inodes == 3  # fs itself, data, dir
    counted = (upper, upper / "data", upper / "dir")
    assert live.size == sum(os.lstat(p).st_blocks * 512 for p in counted)
    run(snap.commit("done", "a", {}))
    (upper / "later").write_bytes(b"more")
    assert run(snap.usage("done")) == live  # committed: the figure measured at commit


def test_mounts_of_committed_and_missing(snap: Snapshotter) -> None:
    commit_layer(snap, "base", "", {})
    with pytest.raises(FailedPreconditionError):
        run(snap.mounts("base"))
    with pytest.raises(NotFoundError):
        run(snap.mounts("nope"))


def test_new_upperdir_takes_the_parents_owner(snap: Snapshotter) -> None:
    commit_layer(snap, "base", "", {})
    os.chown(fs(snap, "base"), 1234, 5678)
    run(snap.prepare("c", "base", {}))
    st = fs(snap, "c").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_failed_create_leaves_no_directory(snap: Snapshotter) -> None:
    run(snap.prepare("a", "", {}))
    before = sorted(p.name for p in snap.layout.snapshots.iterdir())
    with pytest.raises(NotFoundError):
        run(snap.prepare("b", "missing-parent", {}))
    assert sorted(p.name for p in snap.layout.snapshots.iterdir()) == before


def test_remove_deletes_directory_and_cleanup_removes_strays(snap: Snapshotter) -> None:
    run(snap.prepare("a", "", {}))
    run(snap.prepare("b", "", {}))
    a_dir = fs(snap, "a").parent
    stray = snap.layout.snapshots / "new-crashed"
    (stray / "fs").mkdir(parents=True)
    orphan = snap.layout.snapshots / "999"
    orphan.mkdir()
    run(snap.cleanup())
    assert not stray.exists() and not orphan.exists() and a_dir.exists()
    run(snap.remove("a"))
    assert not a_dir.exists()
    assert fs(snap, "b").is_dir()


def test_cleanup_never_descends_into_a_mount(snap: Snapshotter, tmp_path: Path) -> None:
    stray = snap.layout.snapshots / "7"
    (stray / "fs").mkdir(parents=True)
    source = tmp_path / "precious"
    source.mkdir()
    (source / "file").write_bytes(b"keep me")
    subprocess.run(["mount", "--bind", str(source), str(stray / "fs")], check=True)
    try:
        run(snap.cleanup())
        assert (source / "file").read_bytes() == b"keep me"
    finally:
        subprocess.run(["umount", str(stray / "fs")], check=True)
    run(snap.cleanup())
    assert not stray.exists()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = Snapshotter(tmp_path / "root")
    commit_layer(first, "base", "", {"f": b"1"})
    mounts = run(first.prepare("work", "base", {"l": "v"}))
    infos = run(first.walk([]))
    first.close()
    second = Snapshotter(tmp_path / "root")
    try:
        assert run(second.walk([])) == infos
        assert run(second.mounts("work")) == mounts
        assert (fs(second, "base") / "f").read_bytes() == b"1"
        assert [i.kind for i in run(second.walk(["kind==committed"]))] == [Kind.COMMITTED]
    finally:
        second.close()


def test_one_snapshotter_per_root(tmp_path: Path) -> None:
    first = Snapshotter(tmp_path / "root")
    with pytest.raises(RuntimeIntegrationError, match="another snapshotter is using"):
        Snapshotter(tmp_path / "root")
    first.close()
    Snapshotter(tmp_path / "root").close()  # free again once the first is closed


def test_corrupt_metadata_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "metadata.sqlite").write_bytes(b"this is not a database, just junk bytes " * 100)
    with pytest.raises(RuntimeIntegrationError, match=r"metadata .* is unusable"):
        Snapshotter(root)
    (root / "metadata.sqlite").unlink()
    Snapshotter(root).close()  # the failed attempt did not keep the root locked
