"""A realistic layer (debootstrap bookworm + python3) served lazily: python3 runs from the mount,
every file matches the tar, and many readers at once get the right bytes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_fuse_mount import Server
from tests.support.images import debian_python_rootfs_tar
from tests.unit.test_fs_layers import BuiltLayer, build_layer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def python_layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("py")
    layer: BuiltLayer = build_layer(debian_python_rootfs_tar(), tmp / "python.blob",
                                    chunk_size=4 << 20)
    srv = Server(tmp / "mnt", [layer], "--no-background")
    yield srv, srv.layer_dir(layer)
    assert srv.stop() == 0


def test_python3_runs_from_the_lazy_layer(python_layer: tuple[Server, Path]) -> None:
    _, root = python_layer
    done = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", "import json, sys; print(sys.version)"],
        capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"3.11")
    state = json.loads(next((root / ".stargz-snapshotter").iterdir()).read_text())
    assert 0 < state["fetchedSize"] < state["size"]  # lazily: only part of the layer came in


def test_concurrent_cold_readers_get_the_right_bytes(python_layer: tuple[Server, Path]) -> None:
    _, root = python_layer
    want: dict[str, str] = {}
    with tarfile.open(debian_python_rootfs_tar()) as tar:
        for member in tar:
            rel = member.name.removeprefix("./")
            if member.isreg() and rel.startswith("usr/lib/python3.11/") and rel.endswith(".py"):
                extracted = tar.extractfile(member)
                assert extracted is not None
                want[rel] = hashlib.sha256(extracted.read()).hexdigest()
    assert len(want) > 100

    def read(rel: str) -> tuple[str, str]:
        with (root / rel).open("rb", buffering=0) as handle:  # small reads, many at once
            data = b"".join(iter(lambda: handle.read(3001), b""))
        return rel, hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        for rel, got in pool.map(read, sorted(want) * 2):
            assert got == want[rel], rel


def test_every_file_matches_the_tar(python_layer: tuple[Server, Path]) -> None:
    _, root = python_layer
    checked = 0
    with tarfile.open(debian_python_rootfs_tar()) as tar:
        for member in tar:
            rel = member.name.removeprefix("./").strip("/")
            if not rel:
                continue
            path = root / rel
            st = os.lstat(path)
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                want = hashlib.sha256(extracted.read()).hexdigest()
                assert hashlib.sha256(path.read_bytes()).hexdigest() == want, rel
                assert st.st_size == member.size
            elif member.issym():
                assert os.readlink(path) == member.linkname, rel
            checked += 1
    assert checked > 3000
