"""Shared builders for the estargz tests: in-memory tars of every format, blobs, member counts.

(Kept in a test_ module because the estargz tests own only these file names; the
few tests at the bottom check the helpers themselves.)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field

import zstandard

from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import BytesSource
from stargz.estargz.writer import BuildOptions, BuildResult, build

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}
PREFIXES = ("", "./", "/", "../")
MTIME = 1_600_000_000


@dataclass
class Ent:
    """One tar entry to write; ``name`` gets the test's prefix."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    link: str = ""
    major: int = 0
    minor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes | str, **kw: object) -> Ent:
    raw = data.encode() if isinstance(data, str) else data
    return Ent(name, tarfile.REGTYPE, raw, **kw)  # type: ignore[arg-type]


def dir_(name: str, **kw: object) -> Ent:
    kw.setdefault("mode", 0o755)
    return Ent(name, tarfile.DIRTYPE, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str) -> Ent:
    return Ent(name, tarfile.SYMTYPE, link=target, mode=0o777)


def link(name: str, target: str) -> Ent:
    return Ent(name, tarfile.LNKTYPE, link=target)


def chardev(name: str, major: int, minor: int) -> Ent:
    return Ent(name, tarfile.CHRTYPE, major=major, minor=minor)


def blockdev(name: str, major: int, minor: int) -> Ent:
    return Ent(name, tarfile.BLKTYPE, major=major, minor=minor)


def fifo(name: str) -> Ent:
    return Ent(name, tarfile.FIFOTYPE)


def make_tar(entries: list[Ent], prefix: str = "", fmt: str = "pax") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=FORMATS[fmt]) as tf:
        for e in entries:
            info = tarfile.TarInfo(prefix + e.name)
            info.type = e.type
            info.mode, info.uid, info.gid = e.mode, e.uid, e.gid
            info.uname, info.gname, info.mtime = e.uname, e.gname, MTIME
            info.devmajor, info.devminor = e.major, e.minor
            if e.type == tarfile.LNKTYPE:
                info.linkname = prefix + e.link
            else:
                info.linkname = e.link
            if e.xattrs and fmt == "pax":
                info.pax_headers = {"SCHILY.xattr." + k: v for k, v in e.xattrs.items()}
            info.size = len(e.data)
            tf.addfile(info, io.BytesIO(e.data) if e.data else None)
    return out.getvalue()


def build_blob(tar: bytes, **options: object) -> tuple[bytes, BuildResult]:
    options.setdefault("workers", 2)
    out = io.BytesIO()
    result = build(io.BytesIO(tar), out, BuildOptions(**options))  # type: ignore[arg-type]
    return out.getvalue(), result


def open_verified(blob: bytes, digest: str) -> VerifiedBlob:
    return open_blob(BytesSource(blob)).verify(digest)


def built(tar: bytes, **options: object) -> tuple[VerifiedBlob, bytes, BuildResult]:
    blob, result = build_blob(tar, **options)
    return open_verified(blob, result.toc_digest), blob, result


def gzip_members(blob: bytes) -> list[bytes]:
    """Each gzip member's decompressed content, in order."""
    import zlib

    out = []
    rest = blob
    while rest:
        d = zlib.decompressobj(31)
        out.append(d.decompress(rest))
        assert d.eof, "truncated gzip member"
        rest = d.unused_data
    return out


def zstd_frames(blob: bytes) -> list[bytes | None]:
    """Each zstd frame's content in order; None for a skippable frame."""
    out: list[bytes | None] = []
    rest = blob
    while rest:
        if rest[:4] == b"\x50\x2a\x4d\x18":
            size = int.from_bytes(rest[4:8], "little")
            out.append(None)
            rest = rest[8 + size :]
            continue
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(rest))
        rest = d.unused_data
    return out


def decompressed(blob: bytes, compression: str = "gzip") -> bytes:
    if compression == "gzip":
        return b"".join(gzip_members(blob))
    return b"".join(f for f in zstd_frames(blob) if f is not None)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_make_tar_round_trips_in_every_format() -> None:
    ents = [dir_("d/"), file("d/f", "x" * 700), symlink("s", "d/f"), link("h", "d/f")]
    for fmt in FORMATS:
        with tarfile.open(fileobj=io.BytesIO(make_tar(ents, "./", fmt))) as tf:
            names = tf.getnames()
        assert names == ["./d", "./d/f", "./s", "./h"]


def test_gzip_members_counts_concatenated_members() -> None:
    blob = gzip.compress(b"a") + gzip.compress(b"bc") + gzip.compress(b"")
    assert gzip_members(blob) == [b"a", b"bc", b""]
