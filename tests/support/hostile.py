"""Crafted hostile blobs, as the security review built them (issue 16), and a way to run a
command under a memory limit and a timeout, so a regression fails instead of taking the
machine down."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import zstandard

from stargz.estargz.footer import SKIPPABLE_FRAME_MAGIC, estargz_footer, zstd_chunked_footer
from stargz.estargz.tarstream import ustar_header
from stargz.estargz.toc import TOC_TAR_NAME

Kind = Literal["gzip", "zstd"]
_PIECE = 64 << 20  # zeros compressed once, repeated to make any size


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(kind: Kind, data: bytes) -> bytes:
    if kind == "gzip":
        out = zlib.compressobj(6, zlib.DEFLATED, 31)
        return out.compress(data) + out.flush()
    return zstandard.ZstdCompressor(level=3).compress(data)


@functools.cache
def _zeros_piece(kind: Kind) -> bytes:
    return compress(kind, bytes(_PIECE))


def zeros(kind: Kind, size: int) -> bytes:
    """Compressed bytes that inflate to ``size`` zero bytes (members/frames of 64 MiB each,
    one after another: ~65 KB of gzip per 64 MiB)."""
    assert size % _PIECE == 0
    return _zeros_piece(kind) * (size // _PIECE)


@dataclass
class Crafted:
    """A blob made by hand: data members, then a TOC written exactly as given."""

    kind: Kind = "gzip"
    data: bytearray = field(default_factory=bytearray)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def member(self, compressed: bytes) -> int:
        """Append compressed bytes; their offset in the blob."""
        offset = len(self.data)
        self.data += compressed
        return offset

    def file(self, name: str, content: bytes, **fields: Any) -> None:
        """A regular file of one chunk in a member of its own."""
        offset = self.member(compress(self.kind, content))
        self.entries.append({"name": name, "type": "reg", "size": len(content),
                             "offset": offset, "digest": sha(content),
                             "chunkDigest": sha(content), **fields})

    def finish(self) -> tuple[bytes, str]:
        """The blob and its TOC digest."""
        toc_json = json.dumps({"version": 1, "entries": self.entries}, indent="\t").encode()
        blob = bytearray(self.data)
        if self.kind == "gzip":
            offset = len(blob)
            tar = ustar_header(TOC_TAR_NAME, len(toc_json)) + toc_json
            tar += bytes(-len(toc_json) % 512) + bytes(1024)
            blob += compress("gzip", tar) + estargz_footer(offset)
        else:
            compressed = compress("zstd", toc_json)
            blob += SKIPPABLE_FRAME_MAGIC + len(compressed).to_bytes(4, "little")
            offset = len(blob)
            blob += compressed + zstd_chunked_footer(offset, len(compressed), len(toc_json))
        return bytes(blob), sha(toc_json)


def deep_name(depth: int, leaf: str = "f") -> str:
    """A path ``depth`` components deep: ``d/d/.../leaf``."""
    return "d/" * (depth - 1) + leaf


def run_limited(argv: list[str], memory: int = 1 << 30, timeout: float = 300,
                **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its address space limited to ``memory`` bytes and a timeout (a
    regression then fails with MemoryError or TimeoutExpired, never by exhausting the host).
    Two malloc arenas at most, so the limit measures data, not per-thread reservations."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "MALLOC_ARENA_MAX": "2", **kwargs.pop("env", {})}
    return subprocess.run(argv, preexec_fn=limit, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False, **kwargs)


def stargz(*args: str) -> list[str]:
    return [sys.executable, "-m", "stargz.cli.main", *args]


def assert_clean_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 1 and one line on stderr naming ``words``: no traceback, no MemoryError."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("stargz: error: "), done.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
