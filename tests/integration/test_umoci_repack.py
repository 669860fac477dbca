"""A two-layer image made by `umoci repack` whose top layer replaced ``bin/`` by the symlink
``bin -> usr/bin`` (merged /usr) and deleted ``ls``: umoci lists the deleted names as
``bin/.wh.NAME`` under the symlink. containerd's applier writes them through the symlink
(``usr/bin``); `stargz mount` and our snapshotter must mount the layer lazily and show the
same tree as containerd's plain pull with its own overlayfs snapshotter."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    Mounts,
    mounts_fixture,
)
from tests.integration.test_rpull_containerd import Stack, running_stack
from tests.support.containerd import registry_fixture  # noqa: F401
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image

pytestmark = pytest.mark.integration

STARGZ = [sys.executable, "-m", "stargz.cli.main"]


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, stdout=subprocess.DEVNULL)


def _merge_usr_and_delete_ls(rootfs: Path) -> None:
    (rootfs / "usr/bin").mkdir(exist_ok=True)
    for applet in (rootfs / "bin").iterdir():
        os.rename(applet, rootfs / "usr/bin" / applet.name)
    (rootfs / "bin").rmdir()
    (rootfs / "bin").symlink_to("usr/bin")
    (rootfs / "usr/bin/ls").unlink()


def _push(source: str, registry: str, name: str) -> str:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source,
                    f"docker://{registry}/{name}"], check=True)
    return f"{registry}/{name}"


@pytest.fixture(scope="module", name="images")
def images_fixture(registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("umoci")
    extract_tar(busybox_rootfs_tar(), work / "rootfs")
    layout = work / "oci"
    make_oci_image(work / "rootfs", layout, "v1")
    bundle = work / "bundle"
    _umoci("unpack", "--image", f"{layout}:v1", str(bundle))
    _merge_usr_and_delete_ls(bundle / "rootfs")
    _umoci("repack", "--image", f"{layout}:v2", str(bundle))
    top = _top_layer_names(layout, "v2")
    assert "bin" in top and "bin/.wh.ls" in top  # the shape the issue reported
    converted = work / "estargz"
    subprocess.run([*STARGZ, "convert", f"oci:{layout}:v2", f"oci:{converted}:v2"],
                   check=True, capture_output=True)
    return {"plain": _push(f"oci:{layout}:v2", registry, "umoci/plain:v2"),
            "estargz": _push(f"oci:{converted}:v2", registry, "umoci/estargz:v2")}


def _top_layer_names(layout: Path, tag: str) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    manifest = next(m for m in index["manifests"]
                    if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    blobs = layout / "blobs" / "sha256"
    layers = json.loads((blobs / manifest["digest"].split(":")[1]).read_text())["layers"]
    with tarfile.open(blobs / layers[-1]["digest"].split(":")[1]) as tar:
        return [name.removeprefix("./") for name in tar.getnames()]


def describe_tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every name a reader finds under ``root``, with what lstat and read show of it; a name
    readdir lists but lookup refuses (a whiteout overlayfs passes through) is "hidden"."""
    tree: dict[str, tuple[Any, ...]] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for name in os.listdir(directory):
            path = directory / name
            key = str(path.relative_to(root))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                tree[key] = ("hidden",)
                continue
            kind = stat.S_IFMT(st.st_mode)
            what: Any = None
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                pending.append(path)
            tree[key] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                         st.st_rdev, what)
    return tree


def _chain_id(stack: Stack, image: str) -> str:
    """The image's top snapshot name (its chain ID), from containerd's own answer."""
    out = stack.containerd.ctr("images", "ls").stdout
    assert image in out
    config = stack.containerd.ctr("content", "get", _config_digest(stack, image)).stdout
    chain = ""
    for diff_id in json.loads(config)["rootfs"]["diff_ids"]:
        chain = diff_id if not chain else (
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest())
    return chain


def _config_digest(stack: Stack, image: str) -> str:
    for line in stack.containerd.ctr("images", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == image:
            manifest = stack.containerd.ctr("content", "get", fields[2]).stdout
            return str(json.loads(manifest)["config"]["digest"])
    raise AssertionError(f"{image} not in containerd's images")


@pytest.fixture(name="viewed")
def viewed_fixture(tmp_path: Path) -> Iterator[list[Path]]:
    targets: list[Path] = []
    yield targets
    for target in targets:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)


def _view_tree(stack: Stack, snapshotter: str, image: str, target: Path,
               viewed: list[Path]) -> dict[str, tuple[Any, ...]]:
    key = f"view-{snapshotter}"
    ctr = ("snapshots", "--snapshotter", snapshotter)
    stack.containerd.ctr(*ctr, "view", key, _chain_id(stack, image))
    target.mkdir()
    command = stack.containerd.ctr(*ctr, "mounts", str(target), key).stdout
    subprocess.run(command, shell=True, check=True)  # containerd's own `mount -t ...` line
    viewed.append(target)
    return describe_tree(target)


def test_stargz_mount_shows_the_layer_as_containerd_applies_it(
        images: dict[str, str], mounts: Mounts, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mounts.mount(images["estargz"], mnt)
    assert os.readlink(mnt / "bin") == "usr/bin"
    assert not os.path.lexists(mnt / "bin/ls")  # the deleted file is gone
    assert subprocess.run(["chroot", str(mnt), "/bin/sh", "-c", "echo $((6*7))"],
                          capture_output=True, text=True, check=True).stdout == "42\n"
    assert "not a directory" not in mounts.daemon_log(mnt)


def test_lazy_pull_shows_what_containerds_plain_pull_shows(
        registry: str, images: dict[str, str], tmp_path: Path, viewed: list[Path]) -> None:
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{registry}"]\nno_background_fetch = true\n')
    with running_stack(tmp_path, extracting=False,
                       extra_args=["--config", str(config)]) as stack:
        result = stack.rpull(images["estargz"])
        assert "2 lazy, 0 downloaded" in result.stdout, stack.snapshotter.log_text()[-3000:]
        fallbacks = stack.work / "snap-root" / "fallbacks.json"
        assert not fallbacks.exists() or json.loads(fallbacks.read_text()) in ([], {})
        stack.containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "overlayfs",
                             images["plain"])
        ours = _view_tree(stack, "stargz", images["estargz"], tmp_path / "ours", viewed)
        theirs = _view_tree(stack, "overlayfs", images["plain"], tmp_path / "theirs", viewed)
        assert "bin/ls" not in ours and "usr/bin/busybox" in ours
        assert ours["bin"][-1] == "usr/bin"
        assert ours == theirs
