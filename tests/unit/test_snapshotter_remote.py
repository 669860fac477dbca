"""The remote-snapshot hook: handshake, fallback, restore after restart, release.

The hook here is a test double of the lazy layer store (which does not exist yet): it hands out
real directories with real files, so the mounts computed from them are checked for real paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from stargz.errors import AlreadyExistsError, RuntimeIntegrationError, TransportError
from stargz.snapshotter.layout import Mount
from stargz.snapshotter.metastore import Kind
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_REMOTE,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
    wants_remote,
)
from stargz.snapshotter.snapshotter import Snapshotter

INDEX_OFF = ("index=off",) if Path("/sys/module/overlay/parameters/index").exists() else ()


def stargz_labels(chain_id: str, digest: str = "sha256:l1") -> dict[str, str]:
    return {
        LABEL_SNAPSHOT_REF: chain_id,
        LABEL_STARGZ_REFERENCE: "127.0.0.1:5000/test/img:v1",
        LABEL_STARGZ_DIGEST: digest,
        LABEL_STARGZ_LAYERS: f"{digest},sha256:l2",
        LABEL_TOC_DIGEST: "sha256:toc",
    }


class DirectoryLayers:
    """Serves each layer digest from a directory under `base`; records every call."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.calls: list[tuple[str, Any]] = []
        self.decline = False
        self.fail_with: Exception | None = None
        self.restore_to: dict[str, str | None] = {}
        self.check_fails_with: Exception | None = None

    def layer_dir(self, digest: str) -> Path:
        path = self.base / digest.replace(":", "-")
        path.mkdir(parents=True, exist_ok=True)
        (path / "layer-digest").write_text(digest)
        return path

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        self.calls.append(("prepare", (key, list(parent_chain))))
        await asyncio.sleep(0)  # a real hook awaits the registry here
        if self.fail_with is not None:
            raise self.fail_with
        if self.decline:
            return None
        return str(self.layer_dir(labels[LABEL_STARGZ_DIGEST]))

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        self.calls.append(("restore", (name, previous_dir)))
        return self.restore_to.get(name, previous_dir)

    async def release(self, name: str, directory: str) -> None:
        self.calls.append(("release", (name, directory)))

    async def check(self, name: str, directory: str) -> None:
        self.calls.append(("check", (name, directory)))
        await asyncio.sleep(0)  # a real hook waits for the layer's prefetch here
        self.calls.append(("checked", name))
        if self.check_fails_with is not None:
            raise self.check_fails_with


@pytest.fixture
def layers(tmp_path: Path) -> DirectoryLayers:
    return DirectoryLayers(tmp_path / "lazy")


@pytest.fixture
def snap(tmp_path: Path, layers: DirectoryLayers) -> Iterator[Snapshotter]:
    snapshotter = Snapshotter(tmp_path / "root", layers)
    yield snapshotter
    snapshotter.close()


def run(coro: object) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_label_detection() -> None:
    assert wants_remote(stargz_labels("sha256:c1"))
    cri = {LABEL_SNAPSHOT_REF: "c", LABEL_CRI_IMAGE_REF: "r", LABEL_CRI_LAYER_DIGEST: "d"}
    assert wants_remote(cri)
    assert not wants_remote({LABEL_SNAPSHOT_REF: "sha256:c1"})  # ctr's plain pull
    assert not wants_remote(
        {k: v for k, v in stargz_labels("c").items() if k != LABEL_SNAPSHOT_REF}
    )


def test_handshake_commits_under_ref_and_answers_already_exists(
    snap: Snapshotter, layers: DirectoryLayers
) -> None:
    with pytest.raises(AlreadyExistsError, match="sha256:c1"):
        run(snap.prepare("default/1/extract-1", "", stargz_labels("sha256:c1")))
    info = run(snap.stat("sha256:c1"))
    assert info.kind is Kind.COMMITTED and info.parent == ""
    assert info.labels[LABEL_REMOTE] == "remote snapshot"
    assert info.labels[LABEL_SNAPSHOT_REF] == "sha256:c1"  # what containerd's walk filters on
    assert [i.name for i in run(snap.walk([]))] == ["sha256:c1"]  # the active key is gone
    found = run(snap.walk(['labels."containerd.io/snapshot.ref"==sha256:c1,parent==""']))
    assert [i.name for i in found] == ["sha256:c1"]

    # the second layer goes on the first; the hook learns the chain below it
    with pytest.raises(AlreadyExistsError):
        run(
            snap.prepare(
                "default/2/extract-2", "sha256:c1", stargz_labels("sha256:c2", "sha256:l2")
            )
        )
    assert layers.calls[-1] == ("prepare", ("default/2/extract-2", ["sha256:c1"]))

    mounts = run(snap.prepare("container", "sha256:c2", {}))
    upper = snap.layout.snapshots / "3"
    lowers = f"{layers.layer_dir('sha256:l2')}:{layers.layer_dir('sha256:l1')}"
    assert mounts == [
        Mount(
            "overlay",
            "overlay",
            (
                *INDEX_OFF,
                f"workdir={upper / 'work'}",
                f"upperdir={upper / 'fs'}",
                f"lowerdir={lowers}",
            ),
        )
    ]
    assert run(snap.view("v", "sha256:c1", {})) == [
        Mount("bind", str(layers.layer_dir("sha256:l1")), ("ro", "rbind"))
    ]


@pytest.mark.parametrize("how", ["declines", "raises"])
def test_fallback_is_an_ordinary_prepare(
    snap: Snapshotter, layers: DirectoryLayers, how: str
) -> None:
    if how == "declines":
        layers.decline = True
    else:
        layers.fail_with = TransportError("registry unreachable")
    mounts = run(snap.prepare("extract", "", stargz_labels("sha256:c1")))
    assert mounts == [Mount("bind", str(snap.layout.snapshots / "1/fs"), ("rw", "rbind"))]
    info = run(snap.stat("extract"))
    assert info.kind is Kind.ACTIVE and LABEL_REMOTE not in info.labels
    # the client then unpacks and commits as usual
    run(snap.commit("sha256:c1", "extract", {LABEL_SNAPSHOT_REF: "sha256:c1"}))
    assert run(snap.stat("sha256:c1")).kind is Kind.COMMITTED


def test_plain_ref_label_never_asks_the_hook(snap: Snapshotter, layers: DirectoryLayers) -> None:
    run(snap.prepare("extract", "", {LABEL_SNAPSHOT_REF: "sha256:c1"}))
    assert layers.calls == []


def test_target_already_committed_is_reused_without_the_hook(
    snap: Snapshotter, layers: DirectoryLayers
) -> None:
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("ns1/1/extract", "", stargz_labels("sha256:c1")))
    calls = len(layers.calls)
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("ns2/1/extract", "", stargz_labels("sha256:c1")))
    assert len(layers.calls) == calls
    assert [i.name for i in run(snap.walk([]))] == ["sha256:c1"]


def test_concurrent_prepares_of_one_layer_release_the_loser(
    snap: Snapshotter, layers: DirectoryLayers
) -> None:
    async def both() -> list[BaseException | object]:
        return await asyncio.gather(
            snap.prepare("a/1/extract", "", stargz_labels("sha256:c1")),
            snap.prepare("b/1/extract", "", stargz_labels("sha256:c1")),
            return_exceptions=True,
        )

    results = run(both())
    assert all(isinstance(r, AlreadyExistsError) for r in results)
    assert [i.name for i in run(snap.walk([]))] == ["sha256:c1"]
    released = [c for c in layers.calls if c[0] == "release"]
    assert len(released) == 1  # the one whose commit lost; the winner keeps its directory


def test_remove_releases_the_layer(snap: Snapshotter, layers: DirectoryLayers) -> None:
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("k", "", stargz_labels("sha256:c1")))
    run(snap.remove("sha256:c1"))
    assert layers.calls[-1] == ("release", ("sha256:c1", str(layers.layer_dir("sha256:l1"))))
    assert list(snap.layout.snapshots.iterdir()) == []


def test_restart_restores_remote_snapshots(tmp_path: Path, layers: DirectoryLayers) -> None:
    first = Snapshotter(tmp_path / "root", layers)
    with pytest.raises(AlreadyExistsError):
        run(first.prepare("k1", "", stargz_labels("sha256:c1", "sha256:l1")))
    with pytest.raises(AlreadyExistsError):
        run(first.prepare("k2", "sha256:c1", stargz_labels("sha256:c2", "sha256:l2")))
    first.close()

    moved = layers.layer_dir("sha256:l1-remounted")
    layers.restore_to = {"sha256:c1": str(moved), "sha256:c2": None}
    second = Snapshotter(tmp_path / "root", layers)
    try:
        run(second.restore_remote())
        restored = [c for c in layers.calls if c[0] == "restore"]
        assert sorted(name for name, _ in (c[1] for c in restored)) == ["sha256:c1", "sha256:c2"]
        # a new directory from the hook is used from now on
        assert run(second.view("v", "sha256:c1", {})) == [
            Mount("bind", str(moved), ("ro", "rbind"))
        ]
        # a layer the hook could not bring back makes mounts on it fail, clearly
        with pytest.raises(RuntimeIntegrationError, match="could not be mounted again"):
            run(second.prepare("ctr", "sha256:c2", {}))
        assert "ctr" not in [i.name for i in run(second.walk([]))]
    finally:
        second.close()


@pytest.mark.parametrize("bad", ["relative/dir", "{tmp}/missing", "{tmp}/with:colon"])
def test_unusable_directory_from_the_hook_falls_back(
    snap: Snapshotter, layers: DirectoryLayers, tmp_path: Path, bad: str
) -> None:
    bad = bad.format(tmp=tmp_path)
    (tmp_path / "with:colon").mkdir()  # exists, but overlayfs would split the lowerdir at ":"

    async def give_bad(key: str, chain: Sequence[str], labels: Mapping[str, str]) -> str:
        return bad

    layers.prepare_remote = give_bad  # type: ignore[method-assign]
    mounts = run(snap.prepare("extract", "", stargz_labels("sha256:c1")))
    assert mounts[0].type == "bind" and run(snap.stat("extract")).kind is Kind.ACTIVE
    assert layers.calls == [("release", ("sha256:c1", bad))]


def remote_chain(snap: Snapshotter) -> None:
    """Two remote layers (c1, c2) with an ordinary one (c3) on top."""
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("k1", "", stargz_labels("sha256:c1", "sha256:l1")))
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("k2", "sha256:c1", stargz_labels("sha256:c2", "sha256:l2")))
    run(snap.prepare("k3", "sha256:c2", {}))
    run(snap.commit("sha256:c3", "k3", {}))


@pytest.mark.parametrize("kind", ["prepare", "view"])
def test_a_container_snapshot_waits_for_each_remote_layer_at_once(
    snap: Snapshotter, layers: DirectoryLayers, kind: str
) -> None:
    remote_chain(snap)
    layers.calls.clear()
    create = snap.prepare if kind == "prepare" else snap.view
    mounts = run(create("container", "sha256:c3", {}))
    l1, l2 = str(layers.layer_dir("sha256:l1")), str(layers.layer_dir("sha256:l2"))
    # both waits begun before either ended: concurrent, not one after the other
    assert layers.calls[:2] == [("check", ("sha256:c2", l2)), ("check", ("sha256:c1", l1))]
    assert sorted(layers.calls[2:]) == [("checked", "sha256:c1"), ("checked", "sha256:c2")]
    assert l1 in mounts[0].options[-1] and l2 in mounts[0].options[-1]


def test_the_layers_own_prepares_do_not_wait(snap: Snapshotter, layers: DirectoryLayers) -> None:
    with pytest.raises(AlreadyExistsError):
        run(snap.prepare("k1", "", stargz_labels("sha256:c1", "sha256:l1")))
    with pytest.raises(AlreadyExistsError):  # on a remote layer, itself remote: no wait
        run(snap.prepare("k2", "sha256:c1", stargz_labels("sha256:c2", "sha256:l2")))
    layers.decline = True  # nor when it falls back to a download
    run(snap.prepare("k3", "sha256:c2", stargz_labels("sha256:c3", "sha256:l3")))
    assert [c[0] for c in layers.calls] == ["prepare", "prepare", "prepare"]


def test_a_failed_wait_is_a_warning_not_a_failed_prepare(
    snap: Snapshotter, layers: DirectoryLayers, caplog: pytest.LogCaptureFixture
) -> None:
    remote_chain(snap)
    layers.check_fails_with = TransportError("registry unreachable")
    mounts = run(snap.prepare("container", "sha256:c3", {}))
    assert mounts[0].type == "overlay" and run(snap.stat("container")).kind is Kind.ACTIVE
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sorted(warned) == [
        f"remote layer sha256:{c}: waiting for its prefetch failed: registry unreachable"
        for c in ("c1", "c2")
    ]


def test_no_remote_layer_below_means_no_wait(snap: Snapshotter, layers: DirectoryLayers) -> None:
    run(snap.prepare("k1", "", {}))
    run(snap.commit("sha256:c1", "k1", {}))
    run(snap.prepare("container", "sha256:c1", {}))
    run(snap.view("v", "sha256:c1", {}))
    assert layers.calls == []
