"""Footers: round trips, the reference's layout byte for byte, and malformed ones."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stargz.errors import ExternalTOCError, FooterError
from stargz.estargz.footer import (
    Footer,
    estargz_footer,
    legacy_footer,
    parse_footer,
    zstd_chunked_footer,
)


def _gzip_with_extra(extra: bytes | None) -> bytes:
    """An empty gzip member with the given extra field (None: no FEXTRA flag at all)."""
    flags = 0 if extra is None else 0x04
    header = b"\x1f\x8b\x08" + bytes([flags]) + b"\x00" * 4 + b"\x00\xff"
    if extra is not None:
        header += struct.pack("<H", len(extra)) + extra
    return header + b"\x01\x00\x00\xff\xff" + b"\x00" * 8


def test_estargz_footer_bytes_match_the_format_sheet() -> None:
    footer = estargz_footer(0x1234)
    assert len(footer) == 51
    assert footer[:16] == bytes.fromhex("1f8b08040000000000ff1a0053471600")
    assert footer[16:38] == b"0000000000001234STARGZ"
    assert footer[38:] == bytes.fromhex("010000ffff") + b"\x00" * 8
    assert gzip.decompress(footer) == b""


def test_footer_round_trips_for_many_offsets() -> None:
    offsets = [*range(0, 20001), *range(20001, 200001, 97), 200000, 2**40, 2**63 - 1]
    for off in offsets:
        assert parse_footer(estargz_footer(off)) == Footer("estargz", off, 0, 51)
    for off in offsets[::50]:
        assert parse_footer(legacy_footer(off)) == Footer("legacy", off, 0, 47)
        assert parse_footer(b"junk" * 40 + estargz_footer(off)).toc_offset == off


def test_zstd_footer_round_trip_and_layout() -> None:
    footer = zstd_chunked_footer(1000, 200, 3000)
    assert len(footer) == 48 and footer.endswith(b"GnUlInUx")
    assert struct.unpack("<QQQQ", footer[8:40]) == (1000, 200, 3000, 1)
    assert parse_footer(b"x" * 10 + footer) == Footer("zstd-chunked", 1000, 200, 48, 3000)


@pytest.mark.parametrize("extra", [None, b"", b"SG", b"SG\x16\x00", b"XY\x16\x00" + b"0" * 22])
def test_invalid_footer_extra_fields(extra: bytes | None) -> None:
    footer = _gzip_with_extra(extra)
    with pytest.raises(FooterError):
        parse_footer(b"\x00" * (51 - len(footer)) + footer)


def test_wrong_magic_and_bad_hex_are_refused() -> None:
    good = estargz_footer(99)
    with pytest.raises(FooterError, match="footer"):
        parse_footer(good.replace(b"STARGZ", b"STARGY"))
    with pytest.raises(FooterError):
        parse_footer(good.replace(b"0000000000000063", b"00000000000000zz"))
    with pytest.raises(FooterError):
        parse_footer(good[:-1] + b"\x01")  # ISIZE no longer 0


def test_truncated_and_non_gzip_tails() -> None:
    for tail in (b"", b"\x1f\x8b", estargz_footer(5)[1:], b"plain text, no footer" * 10):
        with pytest.raises(FooterError):
            parse_footer(tail)


def test_external_toc_footer_is_refused_clearly() -> None:
    extra = b"SG" + struct.pack("<H", 17) + b"STARGZEXTERNALTOC"
    footer = _gzip_with_extra(extra)
    assert len(footer) == 46
    with pytest.raises(ExternalTOCError, match="external TOC"):
        parse_footer(b"\x00" * 100 + footer)


def test_bad_zstd_footers() -> None:
    good = zstd_chunked_footer(1000, 200, 3000)
    with pytest.raises(FooterError, match="manifest type"):
        parse_footer(good[:32] + struct.pack("<Q", 2) + good[40:])
    with pytest.raises(FooterError):
        parse_footer(b"\x00" * 40 + b"GnUlInUx")
    with pytest.raises(FooterError):
        parse_footer(zstd_chunked_footer(0, 0, 0))


def test_toc_range_checks_the_blob_size() -> None:
    assert Footer("estargz", 100, 0, 51).toc_range(200) == (100, 149)
    for size in (100, 151, 10):
        with pytest.raises(FooterError):
            Footer("estargz", 100, 0, 51).toc_range(size)
    with pytest.raises(FooterError):
        Footer("zstd-chunked", 100, 500, 48).toc_range(400)


def test_footer_of_a_python_gzip_member_with_same_extra_is_accepted() -> None:
    # Another gzip writer (different XFL/OS bytes) producing the same extra field.
    buf = io.BytesIO()
    payload = b"%016xSTARGZ" % 777
    extra = b"SG" + struct.pack("<H", len(payload)) + payload
    buf.write(b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x02\x03" + struct.pack("<H", 26) + extra)
    buf.write(b"\x01\x00\x00\xff\xff" + b"\x00" * 8)
    assert parse_footer(buf.getvalue()).toc_offset == 777


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_tails_give_footers_or_footer_errors(tail: bytes) -> None:
    with contextlib.suppress(FooterError):
        parse_footer(tail)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 50), st.integers(0, 255))
def test_fuzz_one_byte_changed_footer(offset: int, pos: int, value: int) -> None:
    footer = bytearray(estargz_footer(offset))
    footer[pos] = value
    try:
        got = parse_footer(bytes(footer))
    except FooterError:
        return
    assert got.kind in ("estargz", "legacy")
