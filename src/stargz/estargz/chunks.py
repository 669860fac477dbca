"""Chunks: the unit of fetching, decompressing and verifying file data."""

from __future__ import annotations

import msgspec


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """A piece of a regular file, as the TOC describes it (a compact immutable record).

    The chunk's bytes are ``chunk_size`` bytes starting ``inner_offset`` bytes into the
    decompressed member/frame(s) held in the blob at [compressed_offset, compressed_end).
    ``digest`` is the sha256 the decompressed bytes must have.
    """

    path: str
    chunk_offset: int
    chunk_size: int
    compressed_offset: int
    compressed_end: int
    inner_offset: int
    digest: str

    @property
    def compressed_size(self) -> int:
        return self.compressed_end - self.compressed_offset

    @property
    def end(self) -> int:
        """File offset just past this chunk."""
        return self.chunk_offset + self.chunk_size
