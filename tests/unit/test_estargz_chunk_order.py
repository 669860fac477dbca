"""VerifiedBlob.chunks_in_blob_order: every chunk of every regular file once, in blob order,
straight from the TOC index (the layer's fetch plans and blob verify walk it)."""

from __future__ import annotations

import itertools
from pathlib import Path

from stargz.estargz.chunks import Chunk
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from tests.unit.test_layer_helpers import build_blob, payload


def _blob_order(chunk: Chunk) -> tuple[int, int, str]:
    return chunk.compressed_offset, chunk.inner_offset, chunk.path


def test_every_chunk_once_in_blob_order(tmp_path: Path) -> None:
    files = {f"big/f{i}.bin": payload(i, 25000) for i in range(4)}  # several chunks each
    files |= {f"small/s{i}": payload(100 + i, 40) for i in range(30)}  # packed in members
    files["empty"] = b""
    built = build_blob(tmp_path, files, chunk_size=10000, min_chunk_size=4096,
                       prioritized=("big/f3.bin",))
    with FileSource(built.path) as source:
        blob = open_blob(source).verify(built.result.toc_digest)
        chunks = blob.chunks_in_blob_order()
        by_file = [c for e in blob.walk() if e.type == "reg" for c in blob.chunks(e.name)]
    assert sorted(chunks, key=lambda c: (c.compressed_offset, c.inner_offset)) == chunks
    order = _blob_order
    assert sorted(chunks, key=order) == sorted(by_file, key=order)  # the same chunks
    assert len(set(chunks)) == len(chunks)  # once each
    assert chunks[0].path == "big/f3.bin"  # prioritized: first in the blob
    assert any(a.compressed_offset == b.compressed_offset for a, b in itertools.pairwise(chunks))
    paths = {c.path for c in chunks} - {".prefetch.landmark"}
    assert paths == {name for name, data in files.items() if data}


def test_single_chunk_files_in_blob_order_end_where_the_next_member_starts(
        tmp_path: Path) -> None:
    files = {f"d/f{i:03d}": payload(i, 50 + i) for i in range(200)}
    built = build_blob(tmp_path, files, chunk_size=10000, prioritized=("d/f150",))
    with FileSource(built.path) as source:
        blob = open_blob(source).verify(built.result.toc_digest)
        chunks = blob.chunks_in_blob_order()
        for chunk in chunks:
            assert blob.chunks(chunk.path) == [chunk]
            assert blob.read_chunk(chunk) == files.get(chunk.path, b"\x0f")  # or the landmark
        assert [c.compressed_end for c in chunks[:-1]] == [c.compressed_offset for c in chunks[1:]]
        assert chunks[-1].compressed_end == blob.footer.data_end
    assert chunks[0].path == "d/f150"
    assert {c.path for c in chunks} - {".prefetch.landmark"} == set(files)
