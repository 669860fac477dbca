"""The kernel caches a layer's metadata: a second stat walk and a second miss cost no lookups."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_fuse_mount import Server
from tests.support.images import busybox_rootfs_tar
from tests.unit.test_fs_layers import BuiltLayer, build_layer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, BuiltLayer, str]]:
    tmp = tmp_path_factory.mktemp("metacache")
    layer = build_layer(busybox_rootfs_tar(), tmp / "busybox.blob")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(tmp / "mnt", [layer], "--no-background", "--metrics", f"127.0.0.1:{port}")
    yield server, layer, f"http://127.0.0.1:{port}/metrics"
    assert server.stop() == 0, server.stderr


def layer_ops(url: str, digest: str) -> dict[str, float]:
    pattern = rf'stargz_fs_operations_total\{{layer="{re.escape(digest)}",op="(\w+)"\}} (\S+)'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, httpx.get(url).text)}


def walk(root: Path) -> list[tuple[str, int, int]]:
    seen = []
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(directory, name))
            seen.append((os.path.join(directory, name), st.st_ino, st.st_mode))
    return sorted(seen)


def test_second_walk_needs_no_lookup_or_getattr(served: tuple[Server, BuiltLayer, str]) -> None:
    server, layer, url = served
    root = server.layer_dir(layer)
    first = walk(root)
    before = layer_ops(url, layer.digest)
    assert walk(root) == first and len(first) > 100
    after = layer_ops(url, layer.digest)
    assert after.get("lookup", 0) == before.get("lookup", 0)
    assert after.get("getattr", 0) == before.get("getattr", 0)
    assert after["readdir"] > before["readdir"]  # listings are still asked for, and answered


def test_missing_name_is_remembered(served: tuple[Server, BuiltLayer, str]) -> None:
    server, layer, url = served
    missing = server.layer_dir(layer) / "bin" / "no-such-tool"
    before = layer_ops(url, layer.digest).get("lookup", 0)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.lstat(missing)
    assert layer_ops(url, layer.digest)["lookup"] == before + 1
