"""Opening and verifying blobs: every failure is one typed error, never wrong bytes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stargz.errors import (
    ChunkDigestMismatch,
    DecompressionError,
    FooterError,
    FormatError,
    StargzError,
    TOCDigestMismatch,
    TOCError,
)
from stargz.estargz.compression import gzip_member
from stargz.estargz.footer import estargz_footer, legacy_footer
from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import BytesSource, CallableSource, FileSource
from stargz.estargz.tarstream import ustar_header
from tests.unit.test_estargz_helpers import build_blob, built, dir_, file, make_tar, sha

CONTENT = {"a.txt": b"hello estargz " * 20, "d/b.bin": bytes(range(256)) * 3, "d/e": b""}


def _tar(content: dict[str, bytes] = CONTENT) -> bytes:
    return make_tar([dir_("d/"), *(file(n, c) for n, c in content.items())])


def _rewrite_toc(blob: bytes, edit: Any) -> tuple[bytes, str]:
    """Replace a gzip blob's TOC by ``edit(doc)``'s, keeping all data members in place."""
    unverified = open_blob(BytesSource(blob))
    doc = json.loads(unverified.toc_json)
    edit(doc)
    toc_json = json.dumps(doc, indent="\t").encode()
    off = unverified.footer.toc_offset
    pad = b"\x00" * (-len(toc_json) % 512)
    member = gzip_member(ustar_header("stargz.index.json", len(toc_json)) + toc_json + pad
                         + b"\x00" * 1024, 9)
    return blob[:off] + member + estargz_footer(off), sha(toc_json)


def _entries(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in doc["entries"] if e["name"] == name]


def test_verify_with_the_right_digest_reads_every_file() -> None:
    for chunk_size in (7, 64, 4 << 20):
        blob, _, _ = built(_tar(), chunk_size=chunk_size)
        for name, data in CONTENT.items():
            assert blob.read_file(name, 0, 10_000) == data


def test_modified_tar_against_the_old_digest() -> None:
    _, old = build_blob(_tar())
    changed = dict(CONTENT, **{"a.txt": b"hello estargz " * 19 + b"HELLO ESTARGZ "})
    raw, new = build_blob(_tar(changed))
    assert new.toc_digest != old.toc_digest
    with pytest.raises(TOCDigestMismatch, match=old.toc_digest):
        open_blob(BytesSource(raw)).verify(old.toc_digest)


def test_toc_with_a_chunk_digest_removed_is_invalid() -> None:
    raw, _ = build_blob(_tar(), chunk_size=100)

    def drop(doc: dict[str, Any]) -> None:
        del _entries(doc, "d/b.bin")[1]["chunkDigest"]

    bad, _ = _rewrite_toc(raw, drop)
    with pytest.raises(TOCError, match="chunkDigest"):
        open_blob(BytesSource(bad))


def test_toc_with_a_duplicated_offset_is_invalid() -> None:
    raw, _ = build_blob(_tar(), chunk_size=100)

    def dup(doc: dict[str, Any]) -> None:
        chunks = _entries(doc, "d/b.bin")
        chunks[2]["offset"] = chunks[1]["offset"]

    bad, _ = _rewrite_toc(raw, dup)
    with pytest.raises(TOCError, match="used by two chunks"):
        open_blob(BytesSource(bad))


def test_wrong_chunk_digest_in_a_trusted_toc_is_caught_on_read() -> None:
    raw, _ = build_blob(_tar(), chunk_size=100)

    def lie(doc: dict[str, Any]) -> None:
        _entries(doc, "d/b.bin")[1]["chunkDigest"] = sha(b"something else")

    bad, digest = _rewrite_toc(raw, lie)
    blob = open_blob(BytesSource(bad)).verify(digest)
    assert blob.read_file("d/b.bin", 0, 100) == CONTENT["d/b.bin"][:100]  # chunk 0 is fine
    with pytest.raises(ChunkDigestMismatch, match=r"d/b\.bin"):
        blob.read_file("d/b.bin", 100, 10)


def _flipped(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


@pytest.mark.parametrize("compression", ["gzip", "zstd-chunked"])
def test_one_flipped_byte_in_any_chunk_never_gives_wrong_bytes(compression: str) -> None:
    raw, result = build_blob(_tar(), chunk_size=50, compression=compression)
    good = open_blob(BytesSource(raw)).verify(result.toc_digest)
    for name in ("a.txt", "d/b.bin"):
        for chunk in good.chunks(name):
            start = chunk.compressed_offset
            for at in range(start, chunk.compressed_end, 3):
                blob = open_blob(BytesSource(_flipped(raw, at))).verify(result.toc_digest)
                try:
                    data = blob.read_file(name, chunk.chunk_offset, chunk.chunk_size)
                except (ChunkDigestMismatch, DecompressionError):
                    continue
                assert data == CONTENT[name][chunk.chunk_offset : chunk.end]


def test_skip_verification_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    raw, result = build_blob(_tar())
    unverified = open_blob(BytesSource(raw))
    assert not hasattr(unverified, "read_file")
    with caplog.at_level(logging.WARNING):
        blob = unverified.skip_verification("test of the escape hatch")
    assert isinstance(blob, VerifiedBlob) and blob.toc_digest == result.toc_digest
    assert "test of the escape hatch" in caplog.text


@pytest.mark.parametrize("cut", [1, 10, 51, 52, 200, 400])
def test_truncated_blobs_are_format_errors(cut: int) -> None:
    raw, _ = build_blob(_tar())
    with pytest.raises(FormatError):
        open_blob(BytesSource(raw[:-cut]))
    with pytest.raises(FormatError):
        open_blob(BytesSource(raw[cut:]))


def test_non_gzip_blob_and_empty_blob() -> None:
    for data in (b"", b"x", b"plain text " * 100, _tar()):
        with pytest.raises(FooterError):
            open_blob(BytesSource(data))


def test_footer_pointing_into_garbage() -> None:
    raw, _ = build_blob(_tar())
    body = raw[:-51]
    for off in (0, 5, len(body) - 10):
        with pytest.raises(TOCError):
            open_blob(BytesSource(body + estargz_footer(off)))
    with pytest.raises(FooterError):
        open_blob(BytesSource(body + estargz_footer(len(raw) + 5)))


def test_toc_member_with_another_tar_name() -> None:
    raw, _ = build_blob(_tar())
    off = open_blob(BytesSource(raw)).footer.toc_offset
    member = gzip_member(ustar_header("other.json", 2) + b"{}" + b"\x00" * 1534, 9)
    with pytest.raises(TOCError, match=r"other\.json"):
        open_blob(BytesSource(raw[:off] + member + estargz_footer(off)))


def test_sources_refuse_short_and_outside_reads(tmp_path: Any) -> None:
    raw, result = build_blob(_tar())
    path = tmp_path / "blob"
    path.write_bytes(raw)
    with FileSource(path) as fs:
        assert open_blob(fs).verify(result.toc_digest).read_file("a.txt", 0, 5) == b"hello"
        with pytest.raises(FormatError):
            fs.read_at(len(raw) - 2, 5)
    short = CallableSource(lambda off, n: raw[off : off + n - 1], len(raw))
    with pytest.raises(FormatError, match="short read"):
        open_blob(short)


def test_chunk_api() -> None:
    blob, raw, _ = built(_tar(), chunk_size=100)
    chunks = blob.chunks("d/b.bin")
    assert [c.chunk_offset for c in chunks] == list(range(0, 768, 100))
    assert blob.chunk_at("d/b.bin", 250) == chunks[2]
    member = raw[chunks[2].compressed_offset : chunks[2].compressed_end]
    assert blob.decode_chunk(chunks[2], member) == CONTENT["d/b.bin"][200:300]
    with pytest.raises(StargzError):
        blob.chunk_at("d/b.bin", 768)
    with pytest.raises(StargzError):
        blob.read_file("d", 0, 1)
    assert blob.read_file("d/e", 0, 10) == b""
    assert blob.read_file("a.txt", 10_000, 5) == b""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["gzip", "zstd-chunked"]))
def test_fuzz_mutated_blobs_only_typed_errors_and_never_wrong_bytes(
    data: st.DataObject, compression: str
) -> None:
    raw, _ = _FUZZ_BLOBS[compression]
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    try:
        blob = open_blob(BytesSource(bytes(mutated))).skip_verification("fuzzing")
        for name, want in CONTENT.items():
            assert blob.read_file(name, 0, 10_000) == want
    except StargzError:
        pass


_FUZZ_BLOBS = {c: build_blob(_tar(), chunk_size=64, compression=c)
               for c in ("gzip", "zstd-chunked")}


def test_legacy_footer_blobs_open() -> None:
    raw, result = build_blob(_tar())
    legacy = raw[:-51] + legacy_footer(open_blob(BytesSource(raw)).footer.toc_offset)
    blob = open_blob(BytesSource(legacy))
    assert blob.footer.kind == "legacy" and blob.toc_digest == result.toc_digest
    assert blob.verify(result.toc_digest).read_file("a.txt", 0, 5) == b"hello"


def test_names_that_are_not_utf8_still_give_a_readable_toc() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    for fmt in ("pax", "gnu"):
        blob, _, _ = built(make_tar([file(name, "x")], "", fmt))
        assert blob.lookup("caf\ufffd") is not None
