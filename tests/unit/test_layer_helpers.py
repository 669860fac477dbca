"""Blobs for the layer tests, built by the real format library into files, and a fetcher
wrapper that can be switched off (the registry going away), a real implementation."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import TransportError
from stargz.estargz.writer import BuildOptions, BuildResult, build
from stargz.remote import BlobFetcher, Range

LAYER_DIGEST = "sha256:" + "ab" * 32


def payload(seed: int, size: int) -> bytes:
    """Incompressible bytes, so compressed sizes track file sizes."""
    return random.Random(seed).randbytes(size)


def make_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Built:
    path: Path
    result: BuildResult
    files: dict[str, bytes]


def build_blob(
    tmp: Path, files: dict[str, bytes], name: str = "blob", **options: object
) -> Built:
    opts = BuildOptions(workers=1, **options)  # type: ignore[arg-type]
    path = tmp / name
    with path.open("wb") as dst:
        result = build(io.BytesIO(make_tar(files)), dst, opts)
    return Built(path, result, files)


def big_layer(tmp: Path) -> Built:
    """40 files of 64 KiB plus one small file, in 16 KiB chunks (about 2.6 MB compressed)."""
    files = {f"data/f{i:02d}.bin": payload(i, 64 << 10) for i in range(40)}
    files["etc/small.txt"] = b"hello from a small file\n"
    return build_blob(tmp, files, chunk_size=16 << 10, level=1)


class SwitchableFetcher:
    """Passes fetches through while ``up``; raises TransportError while down."""

    def __init__(self, inner: BlobFetcher) -> None:
        self._inner = inner
        self.up = True

    @property
    def size(self) -> int:
        return self._inner.size

    async def fetch(self, ranges: list[Range]) -> list[bytes]:
        if not self.up:
            raise TransportError("registry unreachable (test switch)")
        return await self._inner.fetch(ranges)


def test_big_layer_is_big(tmp_path: Path) -> None:
    built = big_layer(tmp_path)
    assert built.result.blob_size > 40 * (64 << 10)
    assert built.path.stat().st_size == built.result.blob_size
