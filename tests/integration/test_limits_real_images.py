"""The hostile-input limits (Config [limits]) are far from what real layers need: a python3
rootfs and a 100 MB file, converted by our writer and by the Go reference library (what
ctr-remote uses), open under the default limits with room to spare."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from stargz.config import LimitsConfig
from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.writer import BuildOptions, build
from tests.support.goharness import go_build
from tests.support.images import debian_python_rootfs_tar

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _big_file_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("opt/big.bin")
        info.size = 100 * MiB
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    return path


def _ours(tar: Path, out: Path) -> str:
    with open(tar, "rb") as src, open(out, "wb") as dst:
        return build(src, dst, BuildOptions(level=1)).toc_digest


def _theirs(tar: Path, out: Path) -> str:
    return go_build(tar, out, level=1).toc_digest


def _needs(blob: VerifiedBlob) -> tuple[int, int, int]:
    """The largest decompressed extent and compressed size of a chunk, and the deepest path."""
    extent = compressed = depth = 0
    for entry in blob.walk():
        depth = max(depth, entry.name.count("/") + 1)
        if entry.type == "reg" and entry.size:
            for chunk in blob.chunks(entry.name):
                extent = max(extent, chunk.inner_offset + chunk.chunk_size)
                compressed = max(compressed, chunk.compressed_size)
    return extent, compressed, depth


@pytest.mark.parametrize("writer", [_ours, _theirs], ids=["ours", "go"])
@pytest.mark.parametrize("layer", ["python3-rootfs", "100MB-file"])
def test_real_layers_are_far_below_the_limits(tmp_path: Path, writer: object,
                                              layer: str) -> None:
    tar = debian_python_rootfs_tar() if layer == "python3-rootfs" else \
        _big_file_tar(tmp_path / "big.tar")
    out = tmp_path / "layer.blob"
    digest = writer(tar, out)  # type: ignore[operator]
    limits = LimitsConfig()
    with FileSource(out) as source:
        unverified = open_blob(source)  # the default limits
        blob = unverified.verify(digest)
        extent, compressed, depth = _needs(blob)
        entries = len(unverified.toc.entries)
        toc_bytes = len(unverified.toc_json)
    print(f"{layer}: chunk extent {extent}, compressed {compressed}, depth {depth}, "
          f"{entries} entries, TOC {toc_bytes} bytes")
    assert extent <= 4 * MiB <= limits.max_chunk_bytes // 16  # both chunk at 4 MiB
    assert compressed <= 2 * limits.max_chunk_bytes // 16
    assert depth <= limits.max_path_depth // 8
    assert entries * 8 < limits.max_toc_entries and toc_bytes * 8 < limits.max_toc_bytes
