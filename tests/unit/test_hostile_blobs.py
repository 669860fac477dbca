"""Issue 16, points 5, 6 and 9: hostile blobs can not exhaust the host.

Each attack is run as the review ran it, by the real command, in a child limited to 1 GiB of
address space and a timeout: a regression fails here (MemoryError, a traceback, a timeout)
instead of taking the machine down. What must come out is one clear line and status 1, or
the right bytes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from stargz.config import LimitsConfig, parse_config
from stargz.errors import ConfigError, TOCError
from stargz.estargz import extract as extract_mod
from stargz.estargz.dirwalk import KEEP, DirWalker
from stargz.estargz.footer import estargz_footer
from stargz.estargz.reader import open_blob
from stargz.estargz.source import BytesSource, FileSource
from stargz.estargz.tarstream import ustar_header
from stargz.estargz.toc import TOC_TAR_NAME, parse_toc
from tests.support.hostile import (
    Crafted,
    assert_clean_error,
    compress,
    deep_name,
    run_limited,
    sha,
    stargz,
    zeros,
)
from tests.unit.test_estargz_helpers import build_blob, file, make_tar

GiB = 1 << 30
MiB = 1 << 20


def _write(tmp_path: Path, blob: bytes, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


# -- point 5: memory bombs -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_4_GiB_chunk_is_refused_before_anything_is_decompressed(
    tmp_path: Path, kind: str
) -> None:
    """A ~4 MB blob whose one chunk really inflates to 4 GiB (4.1 GB RSS before the fix)."""
    crafted = Crafted(kind)  # type: ignore[arg-type]
    offset = crafted.member(zeros(crafted.kind, 4 * GiB))
    crafted.entries.append({"name": "bomb", "type": "reg", "size": 4 * GiB, "offset": offset,
                            "digest": sha(b"x"), "chunkDigest": sha(b"x")})
    blob, digest = crafted.finish()
    assert len(blob) < 8 * MiB
    path = _write(tmp_path, blob)
    for argv in (["blob", "verify", str(path), "--toc-digest", digest],
                 ["blob", "extract", str(path), str(tmp_path / "out"), "--toc-digest", digest],
                 ["blob", "ls", str(path)]):
        done = run_limited(stargz(*argv))
        assert_clean_error(done, "'bomb'", "limits.max_chunk_bytes")
    assert not (tmp_path / "out" / "bomb").exists()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_member_inflating_past_its_chunk_is_read_only_as_far_as_the_chunk(
    tmp_path: Path, kind: str
) -> None:
    """The chunk claims 1 MiB; its member goes on to 4 GiB of zeros. Decompression stops at
    the claim, so the file verifies and extracts in bounded memory."""
    crafted = Crafted(kind)  # type: ignore[arg-type]
    offset = crafted.member(zeros(crafted.kind, 4 * GiB))
    content = bytes(MiB)
    crafted.entries.append({"name": "f", "type": "reg", "size": MiB, "offset": offset,
                            "digest": sha(content), "chunkDigest": sha(content)})
    blob, digest = crafted.finish()
    path = _write(tmp_path, blob)
    done = run_limited(stargz("blob", "verify", str(path), "--toc-digest", digest))
    assert done.returncode == 0 and "1 files, 1 chunks verified" in done.stdout, done.stderr
    done = run_limited(stargz("blob", "extract", str(path), str(tmp_path / "out"),
                              "--toc-digest", digest))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "f").read_bytes() == content


def test_the_chunk_limit_is_configurable_and_covers_compressed_bytes() -> None:
    crafted = Crafted()
    crafted.file("a", b"x" * 5000)
    crafted.member(os.urandom(12_000))  # junk after a's member: part of its compressed range
    crafted.file("b", b"y")
    blob, _ = crafted.finish()
    open_blob(BytesSource(blob))
    with pytest.raises(TOCError, match=r"'a'.*decompressed bytes.*limits\.max_chunk_bytes"):
        open_blob(BytesSource(blob), LimitsConfig(max_chunk_bytes=4000))
    with pytest.raises(TOCError, match=r"'a'.*compressed bytes.*2 x limits\.max_chunk_bytes"):
        open_blob(BytesSource(blob), LimitsConfig(max_chunk_bytes=5000))


def _packed(tmp_path: Path, files: int) -> tuple[Path, str, dict[str, bytes]]:
    content = {f"f{i:04d}": os.urandom(50) for i in range(files)}
    tar = make_tar([file(name, data) for name, data in content.items()])
    blob, result = build_blob(tar, min_chunk_size=4096, chunk_size=1 << 20)
    return _write(tmp_path, blob), result.toc_digest, content


def test_a_member_shared_by_many_files_is_decompressed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed small files: verify and extract decode each member once, not once per file
    (a member of up to 64 MiB shared by thousands of files would cost thousands of times)."""
    from stargz.estargz import reader

    path, digest, content = _packed(tmp_path, 400)
    calls: list[int] = []
    real = reader.decompress_prefix

    def counting(kind: str, data: bytes, need: int) -> bytes:
        calls.append(need)
        return real(kind, data, need)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "decompress_prefix", counting)
    with FileSource(path) as source:
        blob = open_blob(source).verify(digest)
        members = {c.compressed_offset for e in blob.walk() if e.type == "reg" and e.size
                   for c in blob.chunks(e.name)}
        assert len(members) < len(content) / 10  # they really are packed
        got = {c.path: data for c, data in blob.verified_chunks()}
        assert got.pop(".no.prefetch.landmark") == b"\x0f"
        assert got == content and len(calls) == len(members)
        calls.clear()
        extract_mod.extract(blob, tmp_path / "out")
        assert len(calls) == len(members)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()
            if p.name in content} == content


def test_overlapping_or_out_of_order_chunks_are_refused() -> None:
    d1, d2 = sha(b"1"), sha(b"2")

    def toc(*entries: dict[str, object]) -> bytes:
        return json.dumps({"version": 1, "entries": list(entries)}).encode()

    overlapping = toc(  # two 1000-byte chunks at inner offsets 0 and 10 of one member
        {"name": "a", "type": "reg", "size": 1000, "offset": 0, "chunkDigest": d1},
        {"name": "b", "type": "reg", "size": 1000, "offset": 0, "innerOffset": 10,
         "chunkDigest": d2})
    with pytest.raises(TOCError, match="used by two chunks"):
        parse_toc(overlapping, data_end=100)
    backwards = toc(  # a's second chunk lies before its first
        {"name": "a", "type": "reg", "size": 2, "chunkSize": 1, "offset": 50, "chunkDigest": d1},
        {"name": "a", "type": "chunk", "chunkOffset": 1, "offset": 10, "chunkDigest": d2})
    with pytest.raises(TOCError, match="not laid out in order"):
        parse_toc(backwards, data_end=100)
    interleaved = toc(
        {"name": "a", "type": "reg", "size": 2, "chunkSize": 1, "offset": 10, "chunkDigest": d1},
        {"name": "a", "type": "chunk", "chunkOffset": 1, "offset": 30, "chunkDigest": d2},
        {"name": "b", "type": "reg", "size": 1, "offset": 20, "chunkDigest": sha(b"3")})
    with pytest.raises(TOCError, match="not laid out in order"):
        parse_toc(interleaved, data_end=100)


# -- point 6: deep paths ---------------------------------------------------------------------

def _deep_blob(tmp_path: Path, depth: int) -> tuple[Path, str]:
    crafted = Crafted()
    crafted.file(deep_name(depth), b"deep")
    blob, digest = crafted.finish()
    return _write(tmp_path, blob, f"deep-{depth}"), digest


@pytest.mark.parametrize("depth", [990, 10_000])
def test_deep_paths_get_one_clear_error_from_every_command(tmp_path: Path, depth: int) -> None:
    """990 directories deep was an uncaught RecursionError in verify/ls/extract."""
    path, digest = _deep_blob(tmp_path, depth)
    limit = "limits.max_path_depth" if depth < 2000 else "limits.max_path_bytes"
    for argv in (["blob", "verify", str(path), "--toc-digest", digest],
                 ["blob", "ls", str(path)],
                 ["blob", "extract", str(path), str(tmp_path / "out"), "--toc-digest", digest]):
        assert_clean_error(run_limited(stargz(*argv), timeout=120), limit)


def test_at_the_depth_limit_every_command_works(tmp_path: Path) -> None:
    depth = LimitsConfig().max_path_depth
    path, digest = _deep_blob(tmp_path, depth)
    done = run_limited(stargz("blob", "verify", str(path), "--toc-digest", digest))
    assert done.returncode == 0, done.stderr
    done = run_limited(stargz("blob", "ls", str(path)))
    assert done.returncode == 0 and len(done.stdout.splitlines()) == depth
    out = tmp_path / "out"
    done = run_limited(stargz("blob", "extract", str(path), str(out), "--toc-digest", digest))
    assert done.returncode == 0, done.stderr
    assert (out / deep_name(depth)).read_bytes() == b"deep"


def test_index_and_extraction_are_iterative_and_linear_in_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limits raised, 4,000 directories deep (past Python's recursion limit):
    the index builds, and extracting opens each directory a few times, not once per level
    below it (8 million opens before: 50 s)."""
    depth = 4000
    limits = LimitsConfig(max_path_depth=depth, max_path_bytes=2 * depth)
    path, digest = _deep_blob(tmp_path, depth)
    opens = 0
    real_open = os.open

    def counting(*args: object, **kwargs: object) -> int:
        nonlocal opens
        opens += 1
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    with FileSource(path) as source:
        blob = open_blob(source, limits).verify(digest)
        assert len(list(blob.walk())) == depth + 1  # root and 3,999 implied directories
        monkeypatch.setattr(os, "open", counting)
        extract_mod.extract(blob, tmp_path / "out")
        monkeypatch.undo()
    assert opens < 4 * depth
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:  # read back through fds: the full path is longer than PATH_MAX
        for _ in range(depth - 1):
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        leaf = os.open("f", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 10) == b"deep"
        os.close(leaf)
    finally:
        os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_dir_walker_gives_the_right_directory_with_few_fds(tmp_path: Path) -> None:
    root = tmp_path / "root"
    deep = root / "/".join(f"l{i}" for i in range(200))
    deep.mkdir(parents=True)
    (root / "l0" / "side").mkdir()
    (root / "link").symlink_to(root / "l0")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    walker = DirWalker(root_fd)
    before = _open_fds()
    try:
        parts = [f"l{i}" for i in range(200)]
        for path in (parts, [*parts[:1], "side"], parts[:150], parts, parts[:40], parts[:1]):
            fd = walker.open_dir(path)
            assert os.fstat(fd).st_ino == os.stat(root.joinpath(*path)).st_ino
            assert _open_fds() - before <= KEEP + 200 // KEEP + 1
        with pytest.raises(extract_mod.UnsafePathError):
            walker.open_dir(["link", "side"])
    finally:
        walker.close()
        os.close(root_fd)
    assert _open_fds() == before - 1


# -- point 9: the cost of a hostile but valid TOC --------------------------------------------

def test_millions_of_tiny_entries_are_refused_before_they_are_decoded(tmp_path: Path) -> None:
    """2.5 million entries of ~20 bytes (a 50 MB TOC): refused by counting, in bounded
    memory (decoding them all took gigabytes)."""
    entries = b",".join(b'{"name":"d%d","type":"dir"}' % i for i in range(2_500_000))
    toc_json = b'{"version":1,"entries":[' + entries + b"]}"
    tar = ustar_header(TOC_TAR_NAME, len(toc_json)) + toc_json
    tar += bytes(-len(toc_json) % 512) + bytes(1024)
    path = _write(tmp_path, compress("gzip", tar) + estargz_footer(0))
    done = run_limited(stargz("blob", "ls", str(path)), memory=GiB // 2)
    assert_clean_error(done, "limits.max_toc_entries")


def test_toc_limits_each_give_one_clear_error() -> None:
    crafted = Crafted()
    for i in range(20):
        crafted.file(f"dir{i}/sub/file", b"x")
    blob, _ = crafted.finish()
    cases = {
        "limits.max_toc_entries": LimitsConfig(max_toc_entries=30),  # 20 files + 40 implied
        "limits.max_toc_bytes": LimitsConfig(max_toc_bytes=2000),
        "limits.max_path_depth": LimitsConfig(max_path_depth=2),
        "limits.max_path_bytes": LimitsConfig(max_path_bytes=12),
    }
    for name, limits in cases.items():
        with pytest.raises(TOCError, match=name.replace(".", r"\.")):
            open_blob(BytesSource(blob), limits)
    open_blob(BytesSource(blob), LimitsConfig(max_toc_entries=60, max_path_depth=3))


def test_limits_come_from_the_config_file() -> None:
    config = parse_config("[limits]\nmax_chunk_bytes = 1048576\nmax_path_depth = 64\n")
    assert config.limits == LimitsConfig(max_chunk_bytes=1 << 20, max_path_depth=64)
    with pytest.raises(ConfigError, match=r"limits\.max_toc_entries"):
        parse_config("[limits]\nmax_toc_entries = 0\n")
    with pytest.raises(ConfigError, match=r"limits\.nope"):
        parse_config("[limits]\nnope = 1\n")


def test_the_writer_refuses_chunks_readers_would_refuse() -> None:
    from stargz.errors import BuildError

    limit = LimitsConfig().max_chunk_bytes
    with pytest.raises(BuildError, match=r"limits\.max_chunk_bytes"):
        build_blob(make_tar([file("a", "x")]), chunk_size=limit // 2 + 1)
    build_blob(make_tar([file("a", "x")]), chunk_size=limit // 2, min_chunk_size=limit // 2)


def test_layer_reads_go_in_bounded_steps_and_its_config_bounds_chunks(tmp_path: Path) -> None:
    """A layer honours its own config's limit, however its TOC was opened, and a read of
    many chunks never holds more than about that limit at once."""
    import asyncio

    from stargz.cache import MemoryCache, TieredCache
    from stargz.config import Config
    from stargz.estargz.chunks import Chunk
    from stargz.layer.layer import _groups
    from stargz.layer.sources import mount_from_file

    content = os.urandom(10_000)
    blob, result = build_blob(make_tar([file("f", content)]), chunk_size=1000)
    path = _write(tmp_path, blob)

    async def read(limits: LimitsConfig) -> bytes:
        config = Config(no_background_fetch=True, limits=limits)
        layer = await mount_from_file(path, sha(blob), result.toc_digest,
                                      TieredCache(MemoryCache(1 << 20)), config)
        try:
            return await layer.read("f", 0, len(content))
        finally:
            await layer.close()

    assert asyncio.run(read(LimitsConfig(max_chunk_bytes=2500))) == content
    with pytest.raises(TOCError, match=r"limits\.max_chunk_bytes"):
        asyncio.run(read(LimitsConfig(max_chunk_bytes=999)))
    chunks = [Chunk("f", i * 1000, 1000, i * 10, i * 10 + 10, 0, sha(b"")) for i in range(10)]
    steps = _groups(chunks, 2 * 2500, 2500)
    assert [len(s) for s in steps] == [2, 2, 2, 2, 2]  # 10 bytes compressed, 1000 decoded each


def test_a_file_replaced_by_a_fifo_of_the_same_name_is_not_written(tmp_path: Path) -> None:
    """The later entry wins: its data must not be written into the fifo (that would hang)."""
    crafted = Crafted()
    crafted.file("a", b"data")
    crafted.entries.append({"name": "a", "type": "fifo", "mode": 0o644})
    blob, digest = crafted.finish()
    path = _write(tmp_path, blob)
    out = tmp_path / "out"
    done = run_limited(stargz("blob", "extract", str(path), str(out), "--toc-digest", digest),
                       timeout=60)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.lstat(out / "a").st_mode)
    done = run_limited(stargz("blob", "verify", str(path), "--toc-digest", digest), timeout=60)
    assert done.returncode == 0 and "0 files, 0 chunks" in done.stdout, done.stderr
