"""External TOC (the reference's --estargz-external-toc) and keeping the diff ID: the writer's
blob ends with the 46-byte footer, its TOC comes out separately, and a reader given that TOC
serves verified bytes; without it the reader says where the TOC is."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile

import pytest

from stargz.errors import BuildError, ExternalTOCError, FooterError, TOCDigestMismatch
from stargz.estargz.footer import EXTERNAL_TOC_FOOTER_SIZE, external_toc_footer, parse_footer
from stargz.estargz.reader import open_blob, open_blob_external
from stargz.estargz.source import BytesSource
from stargz.estargz.writer import BuildOptions, BuildResult, build

FILES = [("etc/motd", b"hello\n"), ("usr/big.bin", bytes(range(256)) * 64), ("empty", b"")]


def make_tar(files: list[tuple[str, bytes]] = FILES) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def convert(tar: bytes, **options: object) -> tuple[bytes, BuildResult]:
    out = io.BytesIO()
    result = build(io.BytesIO(tar), out, BuildOptions(chunk_size=4096, **options))  # type: ignore[arg-type]
    return out.getvalue(), result


def test_footer_is_the_references_46_bytes() -> None:
    footer = external_toc_footer()
    assert len(footer) == EXTERNAL_TOC_FOOTER_SIZE == 46
    assert footer[10:12] == struct.pack("<H", 21)  # XLEN: SG, LEN, "STARGZEXTERNALTOC"
    assert footer[12:33] == b"SG" + struct.pack("<H", 17) + b"STARGZEXTERNALTOC"
    assert gzip.decompress(footer) == b""
    with pytest.raises(ExternalTOCError):
        parse_footer(b"\x00" * 64 + footer)


def test_external_toc_blob_reads_with_its_toc_only() -> None:
    tar = make_tar()
    blob, result = convert(tar, external_toc=True)
    assert blob.endswith(external_toc_footer())
    assert b"stargz.index.json" not in gzip.decompress(blob)  # the TOC is not in the layer
    with pytest.raises(ExternalTOCError, match="TOC image"):
        open_blob(BytesSource(blob))
    verified = open_blob_external(BytesSource(blob), result.external_toc).verify(
        result.toc_digest)
    for name, data in FILES:
        assert verified.read_file(name, 0, len(data) + 1) == data
    # the TOC is the same gzip'd tar a TOC member is, and its digest is the JSON's
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.external_toc))) as toc_tar:
        member = toc_tar.extractfile("stargz.index.json")
        assert member is not None
        assert "sha256:" + hashlib.sha256(member.read()).hexdigest() == result.toc_digest
    # the layer as an ordinary tar: every file, no TOC entry
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as layer:
        assert {m.name for m in layer.getmembers()} >= {name for name, _ in FILES}


def test_a_toc_of_another_layer_is_refused() -> None:
    blob, result = convert(make_tar(), external_toc=True)
    _, other = convert(make_tar([("etc/motd", b"another\n")]), external_toc=True)
    with pytest.raises(TOCDigestMismatch):
        open_blob_external(BytesSource(blob), other.external_toc).verify(result.toc_digest)


def test_keep_diff_id_keeps_the_tar_bytes() -> None:
    tar = make_tar() + b"\x00" * 2048  # trailing zeros after the end, as tar(1) pads
    blob, result = convert(tar, external_toc=True, keep_diff_id=True)
    assert gzip.decompress(blob) == tar
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    verified = open_blob_external(BytesSource(blob), result.external_toc).verify(
        result.toc_digest)
    assert verified.read_file("usr/big.bin", 1000, 10) == FILES[1][1][1000:1010]
    assert verified.lookup(".no.prefetch.landmark") is None  # nothing added to the tar


def test_keep_diff_id_refuses_what_it_can_not_keep() -> None:
    tar = bytearray(make_tar([("a", b"x")]))
    tar[512 + 1 + 100] = 1  # a non-zero byte in the payload's padding
    with pytest.raises(BuildError, match="diff ID"):
        convert(bytes(tar), external_toc=True, keep_diff_id=True)
    with pytest.raises(BuildError, match="external TOC"):
        convert(make_tar(), keep_diff_id=True)
    with pytest.raises(BuildError, match="gzip"):
        convert(make_tar(), external_toc=True, compression="zstd-chunked")


def test_footer_errors_say_each_thing_once() -> None:
    with pytest.raises(FooterError) as caught:
        parse_footer(b"not a blob at all" * 8)
    message = str(caught.value)
    assert message.count("footer is not a gzip member") == 1
