"""extract(): the tree on disk is what the tar says, and nothing lands outside dest."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from stargz.errors import UnsafePathError
from stargz.estargz import extract as extract_mod
from stargz.estargz.extract import extract
from tests.unit.test_estargz_helpers import (
    blockdev,
    built,
    chardev,
    dir_,
    fifo,
    file,
    link,
    make_tar,
    symlink,
)

ENTRIES = [
    dir_("etc/", mode=0o755), file("etc/conf", "setting=1\n", mode=0o600, uid=12, gid=34),
    dir_("bin/", mode=0o2755), file("bin/tool", "#!/bin/sh\n" * 50, mode=0o4755),
    link("bin/tool2", "bin/tool"), symlink("bin/sh", "tool"), symlink("abs", "/etc/passwd"),
    dir_("tmp/", mode=0o1777), file("tmp/empty", ""), fifo("tmp/pipe"),
    chardev("dev-null", 1, 3), blockdev("dev-loop", 7, 0),
    dir_("data/"), file("data/big", bytes(range(256)) * 300, xattrs={"user.note": "kept"}),
    dir_("ro/", mode=0o555), file("ro/inside", "x"),
]


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            info: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                        st.st_uid, st.st_gid, int(st.st_mtime), st.st_nlink)
            if stat.S_ISREG(st.st_mode):
                info += (path.read_bytes(),)
            elif stat.S_ISLNK(st.st_mode):
                info += (os.readlink(path),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info += (st.st_rdev,)
            out[rel] = info
    return out


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as err:
        return err.errno not in (errno.ENOTSUP, errno.EPERM)
    finally:
        probe.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="devices and owners need root")
@pytest.mark.parametrize("compression", ["gzip", "zstd-chunked"])
def test_extract_matches_gnu_tar(tmp_path: Path, compression: str) -> None:
    tar = make_tar(ENTRIES, "./", "pax")
    (tmp_path / "layer.tar").write_bytes(tar)
    blob, _, _ = built(tar, chunk_size=1000, compression=compression)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    extract(blob, ours)
    theirs.mkdir()
    subprocess.run(["tar", "-C", str(theirs), "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tmp_path / "layer.tar")], check=True)
    got = _snapshot(ours)
    assert got.pop(".no.prefetch.landmark")[6] == b"\x0f"
    assert got == _snapshot(theirs)
    assert (ours / "bin/tool").stat().st_ino == (ours / "bin/tool2").stat().st_ino
    if _xattrs_supported(tmp_path):
        assert os.getxattr(ours / "data/big", "user.note") == b"kept"


def test_implied_directories_are_created_0755(tmp_path: Path) -> None:
    blob, _, _ = built(make_tar([file("x/y/z", "1")]))
    extract(blob, tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d/x/y").stat().st_mode) == 0o755
    assert (tmp_path / "d/x/y/z").read_bytes() == b"1"


def test_names_with_dotdot_land_inside_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    tar = make_tar([file("../../evil", "x"), file("a/../../../b/evil2", "y")])
    blob, _, _ = built(tar)
    dest = tmp_path / "deep" / "dest"
    extract(blob, dest)
    assert (dest / "evil").read_bytes() == b"x"
    assert (dest / "b" / "evil2").read_bytes() == b"y"
    assert not outside.exists() and not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


def test_existing_symlinks_in_dest_are_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)  # a planted link where the layer has a directory
    (dest / "f").symlink_to(outside / "victim")  # and one where the layer has a file
    blob, _, _ = built(make_tar([dir_("etc/"), file("etc/passwd", "root"), file("f", "data")]))
    extract(blob, dest)
    assert list(outside.iterdir()) == []
    assert (dest / "etc").is_dir() and not (dest / "etc").is_symlink()
    assert (dest / "etc/passwd").read_bytes() == b"root"
    assert (dest / "f").read_bytes() == b"data" and not (dest / "f").is_symlink()


def test_symlinks_are_created_but_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = make_tar([symlink("escape", str(outside)), symlink("rel", "../../outside/x")])
    blob, _, _ = built(tar)
    dest = tmp_path / "dest"
    extract(blob, dest)
    assert os.readlink(dest / "escape") == str(outside)
    assert os.readlink(dest / "rel") == "../../outside/x"
    assert list(outside.iterdir()) == []


def test_writing_through_a_symlinked_parent_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "s").symlink_to(outside)
    (root / "f").write_bytes(b"")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("s/x", "f/x", "s/deeper/x"):
            with pytest.raises(UnsafePathError):
                extract_mod._open_parent(fd, name)
        for name in ("../x", "a/../x", "/x"):
            with pytest.raises(UnsafePathError):
                extract_mod._open_parent(fd, name)
    finally:
        os.close(fd)


def test_extract_into_existing_tree_replaces_files(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    blob, _, _ = built(make_tar([dir_("d/"), file("d/f", "new"), file("g", "gg")]))
    (dest / "d").mkdir(parents=True)
    (dest / "d/f").write_bytes(b"old content that is longer")
    (dest / "g").mkdir()  # an empty dir where the layer has a file
    extract(blob, dest)
    assert (dest / "d/f").read_bytes() == b"new"
    assert (dest / "g").read_bytes() == b"gg"


def test_extract_real_busybox_rootfs_like_tar(tmp_path: Path) -> None:
    from tests.support.images import busybox_rootfs_tar

    tar_path = busybox_rootfs_tar()
    blob, _, _ = built(tar_path.read_bytes(), chunk_size=65536)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    extract(blob, ours)
    theirs.mkdir()
    with tarfile.open(tar_path) as tf:
        names = tf.getnames()
    subprocess.run(["tar", "-C", str(theirs), "-xpf", str(tar_path)], check=True)
    got = _snapshot(ours)
    got.pop(".no.prefetch.landmark")
    want = _snapshot(theirs)
    assert got == want and len(want) >= len(set(names)) - 1


def test_hardlinks_named_before_their_target_and_chains(tmp_path: Path) -> None:
    # A tar can't do this, but a TOC can: the link comes first, and links point at links.
    from stargz.estargz.reader import open_blob
    from stargz.estargz.source import BytesSource
    from tests.unit.test_estargz_verify import _rewrite_toc

    _, raw, _ = built(make_tar([file("t", "target"), link("l1", "t"), link("l2", "l1")]))

    def reorder(doc: dict[str, object]) -> None:
        entries = doc["entries"]
        assert isinstance(entries, list)
        entries.sort(key=lambda e: e["type"] != "hardlink")
        for e in entries:
            if e["name"] == "l2":
                e["linkName"] = "l1"

    bad, digest = _rewrite_toc(raw, reorder)
    blob = open_blob(BytesSource(bad)).verify(digest)
    assert json.loads(blob.toc.to_json())["entries"][0]["type"] == "hardlink"
    extract(blob, tmp_path / "d")
    inodes = {(tmp_path / "d" / n).stat().st_ino for n in ("t", "l1", "l2")}
    assert len(inodes) == 1 and (tmp_path / "d/l2").read_bytes() == b"target"


def test_entries_under_the_layers_own_symlink_land_where_it_leads(tmp_path: Path) -> None:
    # `umoci repack` after replacing bin/ by bin -> usr/bin: names under the symlink
    tar = make_tar([symlink("bin", "usr/bin"), dir_("bin/sub/", mode=0o700),
                    file("bin/sub/f", "through"), file("bin/.wh.gone", "")])
    blob, _, _ = built(tar)
    dest = tmp_path / "dest"
    extract(blob, dest)
    assert os.readlink(dest / "bin") == "usr/bin"
    assert (dest / "usr/bin/sub/f").read_bytes() == b"through"
    assert (dest / "usr/bin/.wh.gone").exists()
    sub = (dest / "usr/bin/sub").stat()
    assert stat.S_IMODE(sub.st_mode) == 0o700  # the listed directory, with its mode and time
    assert sub.st_mtime == blob.lookup("usr/bin/sub").modtime  # type: ignore[union-attr]
    assert stat.S_IMODE((dest / "usr/bin").stat().st_mode) == 0o755  # implied
