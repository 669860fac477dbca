"""A layer makes its chunk list on demand: what it makes is what the whole list says."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from stargz.cache import MemoryCache, TieredCache
from stargz.config import Config
from stargz.layer.layer import Layer
from stargz.layer.sources import mount_from_file
from tests.unit.test_estargz_helpers import build_blob, file, make_tar, open_verified


def _blob(packed: bool) -> tuple[bytes, str, dict[str, bytes]]:
    """Small files (packed: many to a member) and files of several chunks."""
    content = {f"d/f{i:03d}": os.urandom(50) for i in range(120)}
    content |= {f"big{i}": os.urandom(9000) for i in range(3)}
    tar = make_tar([file(name, data) for name, data in content.items()])
    options = {"min_chunk_size": 4096} if packed else {}
    blob, result = build_blob(tar, chunk_size=4000, **options)
    return blob, result.toc_digest, content


@pytest.mark.parametrize("packed", [False, True])
def test_the_chunks_before_an_offset_are_those_of_the_whole_list(packed: bool) -> None:
    data, toc_digest, _ = _blob(packed)
    blob = open_verified(data, toc_digest)
    every = blob.chunks_in_blob_order()
    assert len({c.path for c in every}) > 120 and blob.members_shared == packed
    for end in {0, 1, *(c.compressed_offset for c in every),
                *(c.compressed_offset + 1 for c in every), len(data)}:
        assert blob.chunks_in_blob_order(before=end) == \
            [c for c in every if c.compressed_offset < end]
    plain, compressed = blob.largest_chunk()
    assert plain == max(c.inner_offset + c.chunk_size for c in every)
    assert compressed == max(c.compressed_size for c in every)


@pytest.mark.parametrize("packed", [False, True])
def test_a_layer_reads_every_file_with_its_chunk_list_made_on_demand(
        tmp_path: Path, packed: bool) -> None:
    blob, toc_digest, content = _blob(packed)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    async def read_all() -> tuple[dict[str, bytes], Layer]:
        layer = await mount_from_file(path, digest, toc_digest,
                                      TieredCache(MemoryCache(1 << 20)),
                                      Config(no_background_fetch=True))
        try:
            return {name: await layer.read(name, 0, 1 << 20) for name in content}, layer
        finally:
            await layer.close()

    got, layer = asyncio.run(read_all())
    assert got == content
    shared: dict[int, list[object]] = {}
    for chunk in layer.all_chunks:
        shared.setdefault(chunk.compressed_offset, []).append(chunk)
    assert layer._by_member == {k: v for k, v in shared.items() if len(v) > 1}
    assert bool(layer._by_member) == packed
