"""The FUSE-free core over real eStargz layers: names, attributes, links, whiteouts, errors."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from stargz.cache import cache_from_config
from stargz.config import Config
from stargz.errors import (
    ChunkDigestMismatch,
    InvalidArgumentError,
    NotFoundError,
    TOCDigestMismatch,
    TransportError,
)
from stargz.fs.errmap import errno_for
from stargz.fs.metrics import FSMetrics
from stargz.fs.tree import ROOT_INODE, FSCore, Node
from stargz.layer import Layer, mount
from stargz.remote.fetcher import FileBlobFetcher
from tests.support.images import busybox_rootfs_tar
from tests.unit.test_fs_layers import (
    BuiltLayer,
    build_layer,
    corrupt_chunk,
    lower_upper,
    make_tar,
)


def resolve(core: FSCore, path: str) -> Node:
    node = core.node(ROOT_INODE)
    for part in path.split("/"):
        node = core.lookup(node.ino, part)
    return node


def oserror(fn: object, *args: object) -> int:
    assert callable(fn)
    with pytest.raises(OSError) as caught:
        fn(*args)
    return caught.value.errno or 0


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> BuiltLayer:
    return build_layer(busybox_rootfs_tar(), tmp_path_factory.mktemp("bb") / "bb.blob")


def test_every_tar_member_shows_as_in_the_tar(busybox: BuiltLayer) -> None:
    core = FSCore()
    name = core.add_layer(busybox.view())
    inode_of: dict[str, int] = {}
    with tarfile.open(busybox_rootfs_tar()) as tar:
        members = [m for m in tar.getmembers() if m.name.strip("./")]
        for member in members:
            path = member.name.removeprefix("./").strip("/")
            node = resolve(core, f"{name}/{path}")
            attr = core.getattr(node.ino)
            want = member
            if member.islnk():
                want = tar.getmember(member.linkname)
                assert inode_of.get(member.linkname.removeprefix("./")) in (None, node.ino)
            inode_of[path] = node.ino
            assert stat.S_IMODE(attr.mode) == want.mode & 0o7777, path
            assert (attr.uid, attr.gid, attr.mtime) == (want.uid, want.gid, int(want.mtime)), path
            if want.isreg():
                assert stat.S_ISREG(attr.mode) and attr.size == want.size
                data = asyncio.run(core.read(core.check_open(node.ino), 0, want.size + 10))
                extracted = tar.extractfile(want)
                assert extracted is not None and data == extracted.read(), path
            elif want.issym():
                assert stat.S_ISLNK(attr.mode)
                assert core.readlink(node.ino) == want.linkname.encode()
            elif want.isdir():
                assert stat.S_ISDIR(attr.mode)
            elif want.ischr():
                assert stat.S_ISCHR(attr.mode)
                assert attr.rdev == os.makedev(want.devmajor, want.devminor)
            elif want.isfifo():
                assert stat.S_ISFIFO(attr.mode)
            for key, value in want.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    xattr = key.removeprefix("SCHILY.xattr.").encode()
                    raw = value.encode("utf-8", "surrogateescape")
                    assert core.getxattr(node.ino, xattr) == raw
    ls = resolve(core, f"{name}/bin/ls")
    busybox_node = resolve(core, f"{name}/bin/busybox")
    assert ls.ino == busybox_node.ino and core.getattr(ls.ino).nlink == 2
    assert core.getattr(resolve(core, f"{name}/etc/motd").ino).nlink == 2


def test_whiteouts_and_opaque_dirs_look_as_overlayfs_expects(tmp_path: Path) -> None:
    lower, upper = lower_upper(tmp_path)
    core = FSCore()
    up = core.add_layer(upper.view())
    low = core.add_layer(lower.view())
    assert [n for n, _ in core.readdir(ROOT_INODE)] == sorted([up, low])
    root = resolve(core, up)
    assert [n for n, _ in core.readdir(root.ino)] == ["a", "gone.txt", "opq"]
    for path in ("gone.txt", "a/x"):
        attr = core.getattr(resolve(core, f"{up}/{path}").ino)
        assert stat.S_ISCHR(attr.mode) and attr.rdev == 0 and stat.S_IMODE(attr.mode) == 0
    assert [n for n, _ in core.readdir(resolve(core, f"{up}/opq").ino)] == ["new"]
    opq = resolve(core, f"{up}/opq").ino
    assert core.getxattr(opq, b"trusted.overlay.opaque") == b"y"
    assert core.getxattr(opq, b"user.overlay.opaque") == b"y"
    assert b"trusted.overlay.opaque" in core.listxattr(opq)
    assert oserror(core.getxattr, resolve(core, f"{low}/opq").ino,
                   b"trusted.overlay.opaque") == errno.ENODATA
    for hidden in (".wh.gone.txt", "opq/.wh..wh..opq", "a/.wh.x"):
        assert oserror(resolve, core, f"{up}/{hidden}") == errno.ENOENT
    assert oserror(core.check_open, resolve(core, f"{up}/gone.txt").ino) == errno.EACCES


def test_state_file_is_hidden_and_reports_progress(tmp_path: Path) -> None:
    layer = build_layer(make_tar([("f", "file", b"x" * 1000)]), tmp_path / "l.blob")
    view = layer.view()
    core = FSCore()
    name = core.add_layer(view)
    assert ".stargz-snapshotter" not in dict(core.readdir(resolve(core, name).ino))
    state = resolve(core, f"{name}/.stargz-snapshotter/{layer.digest}.json")
    assert dict(core.readdir(resolve(core, f"{name}/.stargz-snapshotter").ino)) == {
        f"{layer.digest}.json": state}
    assert oserror(resolve, core, f"{name}/.no.prefetch.landmark") == errno.ENOENT
    before = json.loads(asyncio.run(core.read(core.check_open(state.ino), 0, 4096)))
    size = layer.blob.stat().st_size
    assert before == {"digest": layer.digest, "size": size, "fetchedSize": 0,
                      "fetchedPercent": 0.0, "prefetchComplete": False}
    asyncio.run(core.read(core.check_open(resolve(core, f"{name}/f").ino), 0, 1000))
    after = json.loads(asyncio.run(core.read(state, 0, 4096)))
    assert 0 < after["fetchedSize"] <= size
    assert after["fetchedPercent"] == pytest.approx(100.0 * after["fetchedSize"] / size)
    assert core.getattr(state.ino).size == len(asyncio.run(core.read(state, 0, 4096)))


def test_posix_errors(tmp_path: Path) -> None:
    lower, _ = lower_upper(tmp_path)
    core = FSCore()
    name = core.add_layer(lower.view())
    file = resolve(core, f"{name}/a/x").ino
    assert oserror(core.listing, file) == errno.ENOTDIR
    assert oserror(core.readlink, file) == errno.EINVAL
    assert oserror(core.lookup, resolve(core, name).ino, "nope") == errno.ENOENT
    assert oserror(core.check_open, resolve(core, f"{name}/a").ino) == errno.EISDIR
    assert oserror(core.node, 10**9) == errno.ENOENT
    assert asyncio.run(core.read(core.check_open(file), 100, 10)) == b""


def test_a_bad_chunk_is_an_error_never_bytes(tmp_path: Path) -> None:
    content = bytes(range(256)) * 400
    good = build_layer(make_tar([("f", "file", content)]), tmp_path / "good.blob")
    bad = corrupt_chunk(good, "f", tmp_path / "bad.blob")
    core = FSCore()
    name = core.add_layer(bad.view())
    node = core.check_open(resolve(core, f"{name}/f").ino)
    with pytest.raises(Exception) as caught:
        asyncio.run(core.read(node, 0, 4096))
    assert errno_for(caught.value) == errno.EIO


def test_errno_map() -> None:
    assert errno_for(NotFoundError("x")) == errno.ENOENT
    assert errno_for(ChunkDigestMismatch("x")) == errno.EIO
    assert errno_for(TOCDigestMismatch("x")) == errno.EIO
    assert errno_for(TransportError("x")) == errno.EIO
    assert errno_for(InvalidArgumentError("x")) == errno.EINVAL
    assert errno_for(OSError(errno.ENOTDIR, "x")) == errno.ENOTDIR
    assert errno_for(ValueError("bug")) == errno.EIO


def test_layers_come_and_go(tmp_path: Path) -> None:
    lower, upper = lower_upper(tmp_path)
    core = FSCore()
    name = core.add_layer(lower.view())
    assert core.add_layer(lower.view()) == name
    assert core.add_layer(upper.view(), "custom") == "custom"
    with pytest.raises(InvalidArgumentError):
        core.add_layer(upper.view(), "a/b")
    keep = resolve(core, f"{name}/b/keep").ino
    core.remove_layer(name)
    assert core.layer_names() == ["custom"]
    assert oserror(core.getattr, keep) == errno.ENOENT
    assert core.getattr(ROOT_INODE).nlink == 3


def test_metrics_report_layer_stats(tmp_path: Path) -> None:
    lower, _ = lower_upper(tmp_path)
    core = FSCore()
    view = lower.view()
    name = core.add_layer(view)
    metrics = FSMetrics(core.named_layers)
    asyncio.run(core.read(core.check_open(resolve(core, f"{name}/a/x").ino), 0, 100))
    registry = metrics.registry
    labels = {"layer": view.digest, "kind": "on_demand"}
    fetched = registry.get_sample_value("stargz_fs_fetched_bytes_total", labels)
    assert fetched == view.stats().fetched_size > 0
    assert registry.get_sample_value("stargz_fs_cache_misses_total", {"layer": view.digest}) == 1
    assert registry.get_sample_value(  # the reference's name and labels
        "stargz_fs_layer_size_bytes", {"digest": view.digest, "mountpoint": name},
    ) == lower.blob.stat().st_size
    assert registry.get_sample_value(
        "stargz_fs_bytes_served", {"operation_type": "on_demand_bytes_fetched",
                                   "layer": view.digest}) == fetched
    assert core.statfs().files >= 9


def test_core_serves_a_real_lazy_layer(tmp_path: Path) -> None:
    lower, upper = lower_upper(tmp_path)

    async def run() -> None:
        cache = cache_from_config(Config().cache)
        config = Config(no_background_fetch=True)
        core = FSCore()
        for built in (lower, upper):
            layer = await mount(FileBlobFetcher(built.blob), built.digest, built.toc_digest,
                                cache, config)
            core.add_layer(layer)
        low, up = lower.digest, upper.digest
        assert await core.read(core.check_open(resolve(core, f"{low}/b/keep").ino), 0, 99) == (
            b"keep me\n")
        assert stat.S_ISCHR(core.getattr(resolve(core, f"{up}/gone.txt").ino).mode)
        state = json.loads(await core.read(
            resolve(core, f"{low}/.stargz-snapshotter/{low}.json"), 0, 4096))
        assert state["digest"] == low and state["fetchedSize"] > 0
        metrics = FSMetrics(core.named_layers)
        on_demand = metrics.registry.get_sample_value(
            "stargz_fs_fetched_bytes_total", {"layer": low, "kind": "on_demand"})
        assert on_demand is not None and on_demand > 0
        for view in core.layers():
            assert isinstance(view, Layer)
            await view.close()

    asyncio.run(run())


def test_parents(tmp_path: Path) -> None:
    lower, _ = lower_upper(tmp_path)
    core = FSCore()
    name = core.add_layer(lower.view())
    layer_root = resolve(core, name)
    assert core.parent(ROOT_INODE).ino == ROOT_INODE
    assert core.parent(layer_root.ino).ino == ROOT_INODE
    assert core.parent(resolve(core, f"{name}/a").ino) == layer_root
    assert core.parent(resolve(core, f"{name}/a/x").ino) == resolve(core, f"{name}/a")
    state_dir = resolve(core, f"{name}/.stargz-snapshotter")
    assert core.parent(state_dir.ino) == layer_root


def test_inodes_are_computed_from_entry_numbers(tmp_path: Path) -> None:
    """No node table: every inode a lookup or listing gives maps back to the same entry, a
    hardlink's names share one inode, and layers never share or reuse inode numbers."""
    files = [(f"big/f{i:04d}", "file", f"{i}\n") for i in range(3000)]
    layer = build_layer(make_tar([("big", "dir", ""), *files, ("big/sub", "dir", ""),
                                  ("big/link", "hardlink", "big/f0007"),
                                  ("big/.wh.old", "file", b""), ("big/.wh..wh..opq", "file", b"")]),
                        tmp_path / "big.blob")
    core = FSCore()
    name = core.add_layer(layer.view())
    big = resolve(core, f"{name}/big")
    listed = core.readdir(big.ino)
    assert [n for n, _ in listed] == sorted([f"f{i:04d}" for i in range(3000)]
                                            + ["link", "old", "sub"])
    for child_name, child in listed:
        assert core.lookup(big.ino, child_name) == child
        again = core.node(child.ino)
        assert (again.kind, again.entry) == (child.kind, child.entry)
        assert core.parent(child.ino) == big
    shown = dict(listed)
    assert shown["link"].ino == shown["f0007"].ino and core.getattr(shown["link"].ino).nlink == 2
    assert core.getattr(shown["f0008"].ino).nlink == 1
    assert stat.S_ISCHR(core.getattr(shown["old"].ino).mode) and shown["old"].kind == "whiteout"
    assert core.getattr(big.ino).nlink == 3  # ., its entry in the root, sub/..
    assert core.getxattr(big.ino, b"trusted.overlay.opaque") == b"y"
    data = asyncio.run(core.read(core.check_open(shown["f2999"].ino), 0, 100))
    assert data == b"2999\n"
    inodes = {child.ino for _, child in listed}
    assert len(inodes) == 3002  # the hardlink's two names: one inode
    other = core.add_layer(layer.view(), "other")
    other_inodes = {n.ino for _, n in core.readdir(resolve(core, f"{other}/big").ino)}
    assert not inodes & other_inodes
    core.remove_layer(name)
    for ino in inodes:
        assert core.find(ino) is None
    third = core.add_layer(layer.view(), "third")
    assert not inodes & {n.ino for _, n in core.readdir(resolve(core, f"{third}/big").ino)}


def test_inodes_nobody_was_given_are_not_found(tmp_path: Path) -> None:
    layer = build_layer(make_tar([("d", "dir", ""), ("d/f", "file", "x"),
                                  ("d/h", "hardlink", "d/f")]), tmp_path / "l.blob")
    view = layer.view()
    core = FSCore()
    name = core.add_layer(view)
    root = resolve(core, name)
    f = resolve(core, f"{name}/d/f")
    assert resolve(core, f"{name}/d/h").ino == f.ino
    count = view.blob.entry_count
    hardlink = view.blob.number_of(next(e for e in view.blob.walk() if e.type == "hardlink"))
    for number in range(count):
        entry_ino = root.ino + 2 * number
        found = core.find(entry_ino)
        if number == hardlink:  # its name shows the target's inode
            assert found is None
        else:
            assert found is not None and found.entry == view.blob.entry_at(number)
        assert core.find(entry_ino + 1) is None  # no entry here is a whiteout
    assert core.find(root.ino + 2 * count) is None
    assert view.blob.entry_at(count) is None and view.blob.entry_at(-1) is None
    assert oserror(core.lookup, f.ino, "x") == errno.ENOTDIR
