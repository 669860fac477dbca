"""Footers: the fixed-size tail that says where the TOC is.

Three kinds are understood: the eStargz footer (51 bytes), the legacy CRFS stargz
footer (47 bytes) and the zstd:chunked footer (48 bytes, a skippable frame). The
external-TOC footer (46 bytes: the TOC is kept in a separate "TOC image", as the reference's
``--estargz-external-toc`` writes it) makes ``parse_footer`` raise ExternalTOCError, so a
reader that was given no TOC says so; ``external_toc_footer`` writes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from zlib_ng import zlib_ng

from stargz.errors import ExternalTOCError, FooterError
from stargz.estargz.compression import ZLIB_ERROR

ESTARGZ_FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
EXTERNAL_TOC_FOOTER_SIZE = 46
ZSTD_FOOTER_SIZE = 48
MAX_FOOTER_SIZE = ESTARGZ_FOOTER_SIZE

SKIPPABLE_FRAME_MAGIC = b"\x50\x2a\x4d\x18"
ZSTD_CHUNKED_MAGIC = b"GnUlInUx"
ZSTD_MANIFEST_TYPE_CRFS = 1
_STARGZ_MAGIC = b"STARGZ"
_EXTERNAL_TOC_MAGIC = b"STARGZEXTERNALTOC"
# gzip header with FLG=FEXTRA, MTIME=0, XFL=0, OS=255, as the reference writes it.
_GZIP_EXTRA_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
# A final stored deflate block of length 0, then CRC32=0 and ISIZE=0.
_EMPTY_DEFLATE_AND_TRAILER = b"\x01\x00\x00\xff\xff" + b"\x00" * 8

FooterKind = Literal["estargz", "legacy", "zstd-chunked", "external"]


@dataclass(frozen=True)
class Footer:
    """Where the TOC lives.

    toc_offset: for gzip kinds, where the gzip member holding the TOC tar entry starts;
    for zstd:chunked, where the compressed TOC starts (its skippable frame starts 8 bytes
    earlier). toc_length: compressed TOC length (zstd:chunked), or 0 for gzip kinds,
    whose TOC runs up to the footer (see :meth:`toc_range`).
    """

    kind: FooterKind
    toc_offset: int
    toc_length: int
    footer_size: int
    toc_uncompressed_length: int = 0

    def toc_range(self, blob_size: int) -> tuple[int, int]:
        """[start, end) of the compressed TOC in a blob of ``blob_size`` bytes (validated)."""
        footer_start = blob_size - self.footer_size
        zstd = self.kind == "zstd-chunked"
        end = self.toc_offset + self.toc_length if zstd else footer_start
        if footer_start < 0 or self.toc_offset < 0 or self.toc_offset >= end or end > footer_start:
            raise FooterError(
                f"{self.kind} footer puts the TOC at [{self.toc_offset}, {end}), "
                f"outside a {blob_size}-byte blob"
            )
        return self.toc_offset, end

    @property
    def data_end(self) -> int:
        """Where file data can end at the latest: the start of the TOC's member/frame."""
        return self.toc_offset - 8 if self.kind == "zstd-chunked" else self.toc_offset


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at the TOC member at ``toc_offset``."""
    if not 0 <= toc_offset < 1 << 64:
        raise FooterError(f"TOC offset {toc_offset} does not fit a footer")
    payload = b"%016x" % toc_offset + _STARGZ_MAGIC
    extra = b"SG" + struct.pack("<H", len(payload)) + payload
    return _GZIP_EXTRA_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER


def external_toc_footer() -> bytes:
    """The 46-byte footer of a blob whose TOC is kept outside it (the reference's external TOC)."""
    extra = b"SG" + struct.pack("<H", len(_EXTERNAL_TOC_MAGIC)) + _EXTERNAL_TOC_MAGIC
    return _GZIP_EXTRA_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER


def external_footer(blob_size: int) -> Footer:
    """The Footer of an external-TOC blob: file data may run up to its 46-byte footer."""
    end = blob_size - EXTERNAL_TOC_FOOTER_SIZE
    if end < 0:
        raise FooterError(f"a {blob_size}-byte blob can not hold the external-TOC footer")
    return Footer("external", end, 0, EXTERNAL_TOC_FOOTER_SIZE)


def legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte legacy (CRFS) stargz footer."""
    if not 0 <= toc_offset < 1 << 64:
        raise FooterError(f"TOC offset {toc_offset} does not fit a footer")
    extra = b"%016x" % toc_offset + _STARGZ_MAGIC
    return _GZIP_EXTRA_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER


def zstd_chunked_footer(toc_offset: int, compressed: int, uncompressed: int) -> bytes:
    """The 48-byte zstd:chunked footer: a skippable frame holding the manifest position."""
    payload = struct.pack("<QQQQ", toc_offset, compressed, uncompressed, ZSTD_MANIFEST_TYPE_CRFS)
    payload += ZSTD_CHUNKED_MAGIC
    return SKIPPABLE_FRAME_MAGIC + struct.pack("<I", len(payload)) + payload


def parse_footer(tail: bytes) -> Footer:
    """Parse the footer at the end of ``tail`` (the last bytes of a blob, any length >= footer).

    Tries zstd:chunked, then eStargz (51), then legacy (47); refuses the external-TOC
    footer with ExternalTOCError and anything else with FooterError.
    """
    if len(tail) >= ZSTD_FOOTER_SIZE and tail[-8:] == ZSTD_CHUNKED_MAGIC:
        return _parse_zstd_footer(tail[-ZSTD_FOOTER_SIZE:])
    errors: list[str] = []
    for size, parse in (
        (ESTARGZ_FOOTER_SIZE, _parse_estargz_extra),
        (LEGACY_FOOTER_SIZE, _parse_legacy_extra),
    ):
        if len(tail) < size:
            errors.append(f"blob tail is {len(tail)} bytes, shorter than {size}")
            continue
        try:
            extra = _gzip_footer_extra(tail[-size:])
            return parse(extra)
        except FooterError as err:
            if str(err) not in errors:  # both sizes often fail alike: say it once
                errors.append(str(err))
    _refuse_external_toc(tail)
    raise FooterError("no eStargz, legacy stargz or zstd:chunked footer: " + "; ".join(errors))


def _refuse_external_toc(tail: bytes) -> None:
    if len(tail) < EXTERNAL_TOC_FOOTER_SIZE:
        return
    try:
        extra = _gzip_footer_extra(tail[-EXTERNAL_TOC_FOOTER_SIZE:])
    except FooterError:
        return
    if extra[4:] == _EXTERNAL_TOC_MAGIC:
        raise ExternalTOCError(
            "the blob's footer says its TOC is stored outside the blob (external TOC, "
            "in the image's TOC image)"
        )


def _gzip_footer_extra(footer: bytes) -> bytes:
    """Check ``footer`` is one empty gzip member with only an extra field; return the field."""
    if footer[:3] != b"\x1f\x8b\x08":
        raise FooterError("footer is not a gzip member")
    if footer[3] != 0x04:
        raise FooterError(f"footer gzip flags are {footer[3]:#04x}, want FEXTRA only")
    (xlen,) = struct.unpack_from("<H", footer, 10)
    if 12 + xlen + len(_EMPTY_DEFLATE_AND_TRAILER) != len(footer):
        raise FooterError(f"footer extra field is {xlen} bytes, which does not fit the footer")
    inflater = zlib_ng.decompressobj(31)
    try:
        content = inflater.decompress(footer)
    except ZLIB_ERROR as err:
        raise FooterError(f"footer is not a valid gzip member: {err}") from None
    if content or not inflater.eof or inflater.unused_data:
        raise FooterError("footer gzip member is not empty")
    return footer[12 : 12 + xlen]


def _parse_offset(hex_digits: bytes) -> int:
    if len(hex_digits) != 16 or any(c not in b"0123456789abcdefABCDEF" for c in hex_digits):
        raise FooterError(f"footer TOC offset {hex_digits!r} is not 16 hex digits")
    return int(hex_digits, 16)


def _parse_estargz_extra(extra: bytes) -> Footer:
    if len(extra) < 4 or extra[:2] != b"SG":
        raise FooterError(f"footer extra field {extra[:4]!r} does not start with subfield 'SG'")
    (sub_len,) = struct.unpack_from("<H", extra, 2)
    if sub_len != 22 or len(extra) != 26:
        raise FooterError(f"footer SG subfield is {sub_len} bytes, want 22")
    if extra[20:] != _STARGZ_MAGIC:
        raise FooterError("footer SG subfield lacks the STARGZ magic")
    return Footer("estargz", _parse_offset(extra[4:20]), 0, ESTARGZ_FOOTER_SIZE)


def _parse_legacy_extra(extra: bytes) -> Footer:
    if len(extra) != 22 or extra[16:] != _STARGZ_MAGIC:
        raise FooterError("legacy footer extra field is not %016x + STARGZ")
    return Footer("legacy", _parse_offset(extra[:16]), 0, LEGACY_FOOTER_SIZE)


def _parse_zstd_footer(footer: bytes) -> Footer:
    if footer[:4] != SKIPPABLE_FRAME_MAGIC or footer[4:8] != struct.pack("<I", 40):
        raise FooterError("zstd:chunked footer is not a 40-byte skippable frame")
    offset, compressed, uncompressed, kind = struct.unpack_from("<QQQQ", footer, 8)
    if kind != ZSTD_MANIFEST_TYPE_CRFS:
        raise FooterError(f"zstd:chunked manifest type {kind} is not supported (want 1)")
    if offset < 8 or compressed == 0:
        raise FooterError(f"zstd:chunked footer has impossible TOC position {offset}:{compressed}")
    return Footer("zstd-chunked", offset, compressed, ZSTD_FOOTER_SIZE, uncompressed)
