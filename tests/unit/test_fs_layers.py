"""Real layers for the filesystem tests (built with stargz.estargz), and tests of BlobLayerView.

The builders here are imported by the other test_fs_* and test_fuse_* modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from stargz.errors import ChunkDigestMismatch, DecompressionError, NotFoundError, StargzError
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.writer import BuildOptions, build
from stargz.fs.view import BlobLayerView

MTIME = 1_700_000_000


@dataclass(frozen=True)
class BuiltLayer:
    blob: Path
    digest: str
    toc_digest: str

    def view(self) -> BlobLayerView:
        blob = open_blob(FileSource(self.blob)).verify(self.toc_digest)
        return BlobLayerView(self.digest, blob)


def build_layer(tar: Path | bytes, out: Path, chunk_size: int = 64 << 10) -> BuiltLayer:
    src = io.BytesIO(tar) if isinstance(tar, bytes) else tar.open("rb")
    with src, out.open("wb") as dst:
        result = build(src, dst, BuildOptions(chunk_size=chunk_size, level=1, workers=2))
    digest = "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    return BuiltLayer(out, digest, result.toc_digest)


def make_tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """(name, kind, data) with kind in file/dir/symlink/hardlink/char; data = content or target."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            info.mode = 0o755 if kind == "dir" else 0o644
            payload = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
            elif kind == "char":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return out.getvalue()


LOWER_ENTRIES: list[tuple[str, str, bytes | str]] = [
    ("a", "dir", ""), ("a/x", "file", "lower x\n"), ("a/y", "file", "lower y\n"),
    ("b", "dir", ""), ("b/keep", "file", "keep me\n"),
    ("gone.txt", "file", "to be whited out\n"),
    ("opq", "dir", ""), ("opq/old", "file", "hidden by opaque\n"),
]
UPPER_ENTRIES: list[tuple[str, str, bytes | str]] = [
    (".wh.gone.txt", "file", b""),
    ("a", "dir", ""), ("a/.wh.x", "file", b""), ("a/z", "file", "upper z\n"),
    ("opq", "dir", ""), ("opq/.wh..wh..opq", "file", b""), ("opq/new", "file", "new\n"),
]


def lower_upper(tmp: Path) -> tuple[BuiltLayer, BuiltLayer]:
    return (build_layer(make_tar(LOWER_ENTRIES), tmp / "lower.blob"),
            build_layer(make_tar(UPPER_ENTRIES), tmp / "upper.blob"))


def corrupt_chunk(layer: BuiltLayer, path: str, out: Path) -> BuiltLayer:
    """A copy of the blob with one byte flipped inside ``path``'s first chunk's member."""
    view = layer.view()
    chunk = view.blob.chunks(path)[0]
    data = bytearray(layer.blob.read_bytes())
    data[chunk.compressed_offset + chunk.compressed_size // 2] ^= 0x55
    out.write_bytes(bytes(data))
    return BuiltLayer(out, "sha256:" + hashlib.sha256(data).hexdigest(), layer.toc_digest)


def test_reads_match_the_file_at_every_offset(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1000  # 256000 bytes over several 64 KiB chunks
    layer = build_layer(make_tar([("f", "file", content)]), tmp_path / "l.blob")
    view = layer.view()
    for offset, size in [(0, 4096), (65530, 20), (0, len(content) + 99), (255999, 10), (300000, 5)]:
        got = asyncio.run(view.read("f", offset, size))
        assert got == content[offset : offset + size]
    stats = view.stats()
    assert stats.size == layer.blob.stat().st_size
    assert 0 < stats.fetched_size <= stats.size
    assert stats.cache_hits > 0 and stats.cache_misses > 0


def test_missing_and_non_regular_paths_are_not_found(tmp_path: Path) -> None:
    view = build_layer(make_tar(LOWER_ENTRIES), tmp_path / "l.blob").view()
    for path in ("nope", "a"):
        with pytest.raises(NotFoundError):
            asyncio.run(view.read(path, 0, 10))


def test_a_corrupt_chunk_raises_and_is_reported(tmp_path: Path) -> None:
    content = bytes(range(256)) * 400
    good = build_layer(make_tar([("f", "file", content)]), tmp_path / "good.blob")
    bad = corrupt_chunk(good, "f", tmp_path / "bad.blob").view()
    with pytest.raises(StargzError) as caught:
        asyncio.run(bad.read("f", 0, 100))
    assert isinstance(caught.value, ChunkDigestMismatch | DecompressionError)
    assert bad.stats().last_error


def test_serve_reports_a_bad_blob_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from stargz.fs.serve import main

    (tmp_path / "junk.blob").write_bytes(b"not a blob" * 10)
    for blob in ("missing.blob", "junk.blob"):
        assert main([str(tmp_path / "mnt"), str(tmp_path / blob)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
