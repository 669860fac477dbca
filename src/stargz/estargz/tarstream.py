"""Reading tar headers (USTAR, PAX, GNU) with their raw bytes, and writing simple ones.

The builder copies each entry's header blocks through unchanged, so it needs both
the parsed fields and the exact bytes; Python's tarfile gives only the former.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stargz.errors import BuildError

BLOCK = 512
EOF_BLOCKS = b"\x00" * (2 * BLOCK)
_HEADER_ONLY = frozenset(b"123456")  # link, symlink, char, block, dir, fifo: no payload
_TYPE_NAMES = {
    ord("0"): "reg", ord("7"): "reg", 0: "reg", ord("1"): "hardlink", ord("2"): "symlink",
    ord("3"): "char", ord("4"): "block", ord("5"): "dir", ord("6"): "fifo",
}
_XATTR_PREFIX = "SCHILY.xattr."


@dataclass
class TarMember:
    """One tar entry: its raw header blocks (extensions included) and parsed fields."""

    raw_header: bytes
    name: str
    type: str
    size: int  # payload bytes that follow the header (0 for header-only types)
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    modtime: int = 0
    link_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def padded_size(self) -> int:
        return padded(self.size)


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field_bytes: bytes) -> bytes:
    end = field_bytes.find(b"\x00")
    return field_bytes if end < 0 else field_bytes[:end]


def parse_number(field_bytes: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field_bytes and field_bytes[0] & 0x80:
        value = int.from_bytes(field_bytes, "big") & ~(0x80 << (8 * (len(field_bytes) - 1)))
        if field_bytes[0] & 0x40:  # negative base-256
            value -= 1 << (8 * len(field_bytes) - 1)
        return value
    text = _cstr(field_bytes).strip(b" \x00")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BuildError(f"tar header has a malformed number field {field_bytes!r}") from None


def _check_checksum(block: bytes) -> None:
    want = parse_number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    if want not in (unsigned, signed):
        raise BuildError("tar header checksum mismatch (not a tar stream, or a corrupt one)")


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX extended header records: "LEN key=value\\n" each."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            break  # trailing NULs after the last record
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            raise BuildError("tar PAX header has a malformed record")
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise BuildError("tar PAX record lacks '='")
        records[_decode(key)] = value
        pos += length
    return records


class TarReader:
    """Reads tar members from ``read(n)`` (which returns exactly n bytes, or fewer at EOF)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise BuildError(f"tar stream is truncated inside {what}")
        return data

    def next_member(self) -> TarMember | None:
        """The next member's header (its payload is left to the caller), or None at the end."""
        raw_parts: list[bytes] = []
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[str, bytes] = {}
        while True:
            block = self._read(BLOCK)
            if len(block) == 0 and not raw_parts:
                return None  # a stream cut right after a member: treated as the end, like Go
            if len(block) != BLOCK:
                raise BuildError("tar stream is truncated inside a header")
            if block == b"\x00" * BLOCK:
                if raw_parts:
                    raise BuildError("tar stream ends between an extended header and its entry")
                return None
            _check_checksum(block)
            typeflag = block[156]
            size = parse_number(block[124:136])
            if size < 0:
                raise BuildError("tar header has a negative size")
            if typeflag in b"xgLK":
                payload = self._read_exact(padded(size), "an extended header")[:size]
                if typeflag == ord("g"):
                    continue  # global PAX headers are dropped, as they can not be reordered
                raw_parts.append(block + self._pad(payload))
                if typeflag == ord("x"):
                    pax.update(parse_pax(payload))
                elif typeflag == ord("L"):
                    long_name = _cstr(payload)
                else:
                    long_link = _cstr(payload)
                continue
            raw_parts.append(block)
            return self._member(b"".join(raw_parts), block, size, pax, long_name, long_link)

    @staticmethod
    def _pad(payload: bytes) -> bytes:
        return payload + b"\x00" * (padded(len(payload)) - len(payload))

    def _member(
        self, raw: bytes, block: bytes, size: int, pax: dict[str, bytes],
        long_name: bytes | None, long_link: bytes | None,
    ) -> TarMember:
        typeflag = block[156]
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] != 0:
            name = _cstr(block[345:500]) + b"/" + name
        name = pax.get("path", long_name if long_name is not None else name)
        link = pax.get("linkpath", long_link if long_link is not None else _cstr(block[157:257]))
        if "GNU.sparse.map" in pax or "GNU.sparse.major" in pax or typeflag == ord("S"):
            raise BuildError(f"sparse tar entry {_decode(name)!r} is not supported")
        kind = _TYPE_NAMES.get(typeflag)
        if kind is None:
            raise BuildError(f"unsupported tar entry type {chr(typeflag)!r} for {_decode(name)!r}")
        if typeflag == 0 and name.endswith(b"/"):
            kind = "dir"  # old V7 archives mark directories with a trailing slash only
        if "size" in pax:
            size = _pax_int(pax, "size")
        if typeflag in _HEADER_ONLY:
            size = 0
        return TarMember(
            raw_header=raw,
            name=_decode(name),
            type=kind,
            size=size,
            mode=parse_number(block[100:108]),
            uid=_pax_int(pax, "uid") if "uid" in pax else parse_number(block[108:116]),
            gid=_pax_int(pax, "gid") if "gid" in pax else parse_number(block[116:124]),
            user_name=_decode(pax.get("uname", _cstr(block[265:297]))),
            group_name=_decode(pax.get("gname", _cstr(block[297:329]))),
            modtime=_pax_time(pax) if "mtime" in pax else parse_number(block[136:148]),
            link_name=_decode(link),
            dev_major=parse_number(block[329:337]),
            dev_minor=parse_number(block[337:345]),
            xattrs=_xattrs(pax),
        )


def _xattrs(pax: dict[str, bytes]) -> dict[str, bytes]:
    return {k[len(_XATTR_PREFIX) :]: v for k, v in pax.items() if k.startswith(_XATTR_PREFIX)}


def _pax_int(pax: dict[str, bytes], key: str) -> int:
    try:
        value = int(pax[key])
    except ValueError:
        raise BuildError(f"tar PAX record {key!r} is not a number") from None
    if value < 0:
        raise BuildError(f"tar PAX record {key!r} is negative")
    return value


def _pax_time(pax: dict[str, bytes]) -> int:
    try:
        return round(float(pax["mtime"]))
    except (ValueError, OverflowError):
        raise BuildError("tar PAX record 'mtime' is not a number") from None


def ustar_header(name: str, size: int, mode: int = 0, typeflag: bytes = b"0") -> bytes:
    """A plain USTAR header block for a generated entry (landmarks, the TOC)."""
    raw_name = name.encode()
    if len(raw_name) > 100:
        raise BuildError(f"generated tar name {name!r} is too long")
    block = bytearray(BLOCK)
    block[0 : len(raw_name)] = raw_name
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"%07o\x00" % 0
    block[116:124] = b"%07o\x00" % 0
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % 0
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[329:337] = b"%07o\x00" % 0
    block[337:345] = b"%07o\x00" % 0
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)
