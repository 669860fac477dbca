"""The builder, against the reference suite's cases: every tar format and name prefix."""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from pathlib import Path

import pytest
import zstandard

from stargz.errors import BuildError
from stargz.estargz.reader import VerifiedBlob
from stargz.estargz.toc import TOCEntry
from stargz.estargz.writer import BuildOptions, build
from tests.unit.test_estargz_helpers import (
    FORMATS,
    MTIME,
    PREFIXES,
    Ent,
    blockdev,
    build_blob,
    built,
    chardev,
    decompressed,
    dir_,
    fifo,
    file,
    gzip_members,
    link,
    make_tar,
    sha,
    symlink,
    zstd_frames,
)

FORMAT_PREFIX = list(itertools.product(FORMATS, PREFIXES))
COMPRESSIONS = ("gzip", "zstd-chunked")

BUILD_CASES = {
    "regfiles and directories": [
        file("foo", "test1"),
        dir_("foo2/"),
        file("foo2/bar", "test2", xattrs={"user.test": "sample"}),
    ],
    "empty files": [
        item for i in range(1, 6)
        for item in (file(f"foo{i}", "tttttt"), file(f"foo_empty{i}", ""))
    ] + [file("foo6", "tttttt")],
    "various files": [
        file("baz.txt", "bazbazbazbazbazbazbaz"), file("foo.txt", "a"),
        symlink("barlink", "test/bar.txt"), dir_("test/"), dir_("dev/"),
        blockdev("dev/testblock", 3, 4), fifo("dev/testfifo"), chardev("dev/testchar1", 5, 6),
        file("test/bar.txt", "testbartestbar", xattrs={"user.test2": "sample2"}),
        dir_("test2/"), link("test2/bazlink", "baz.txt"), chardev("dev/testchar2", 1, 2),
    ],
    "no contents": [
        file("baz.txt", ""), symlink("barlink", "test/bar.txt"), dir_("test/"), dir_("dev/"),
        blockdev("dev/testblock", 3, 4), fifo("dev/testfifo"), chardev("dev/testchar1", 5, 6),
        file("test/bar.txt", "", xattrs={"user.test2": "sample2"}), dir_("test2/"),
        link("test2/bazlink", "baz.txt"), chardev("dev/testchar2", 1, 2),
    ],
}


def _src(tar: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(tar)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    return tar


def _check_entries(blob: VerifiedBlob, ents: list[Ent], fmt: str) -> None:
    for e in ents:
        got = blob.lookup(e.name)
        assert got is not None, e.name
        if e.type == tarfile.LNKTYPE:
            assert got is blob.lookup(e.link)
            continue
        want_type = {
            tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
            tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
        }[e.type]
        assert (got.type, got.mode, got.modtime) == (want_type, e.mode, MTIME)
        if want_type == "reg":
            assert blob.read_file(e.name, 0, len(e.data) + 10) == e.data
            assert got.digest == sha(e.data)
        if want_type == "symlink":
            assert got.link_name == e.link
        if want_type in ("char", "block"):
            assert (got.dev_major, got.dev_minor) == (e.major, e.minor)
        if fmt == "pax":
            assert got.xattrs == {k: v.encode() for k, v in e.xattrs.items()}


@pytest.mark.parametrize("fmt,prefix", FORMAT_PREFIX)
@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_build_cases_from_every_source_compression(case: str, fmt: str, prefix: str) -> None:
    ents = BUILD_CASES[case]
    tar = make_tar(ents, prefix, fmt)
    digests = set()
    for src_kind in ("plain", "gzip", "zstd"):
        for compression in COMPRESSIONS:
            blob, raw, result = built(_src(tar, src_kind), chunk_size=4, compression=compression)
            _check_entries(blob, ents, fmt)
            assert result.diff_id == sha(decompressed(raw, compression))
            assert result.blob_digest == sha(raw) and result.blob_size == len(raw)
            assert result.uncompressed_size == len(decompressed(raw, compression))
            digests.add((compression, result.toc_digest))
    assert len(digests) == 2  # the source's compression changes nothing in the output


@pytest.mark.parametrize("fmt,prefix", FORMAT_PREFIX)
def test_blob_is_still_the_original_tar_plus_landmark_and_toc(fmt: str, prefix: str) -> None:
    ents = BUILD_CASES["various files"]
    tar = make_tar(ents, prefix, fmt)
    raw, _ = build_blob(tar, chunk_size=4)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tf:
        names = tf.getnames()
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        original = tf.getnames()
    assert names == [".no.prefetch.landmark", *original, "stargz.index.json"]
    plain = decompressed(raw)
    assert tar[:-1024].rstrip(b"\x00") in plain  # headers and payloads copied through unchanged


# Member counts of the reference's writer tests; the builder adds the landmark member
# pair in front (its header member, then its payload member which takes the following
# headers), so a non-empty layer has one more member, an empty one two more.
MEMBER_CASES = [
    ("empty", [], 0, 2),
    ("1dir_1empty_file", [dir_("foo/"), file("foo/bar.txt", "")], 0, 3),
    ("1dir_1file", [dir_("foo/"), file("foo/bar.txt", "Some contents")], 0, 4),
    ("2meta_2file", [dir_("bar/", uid=50, gid=100), dir_("foo/", uid=50, gid=100),
                     file("foo/bar.txt", "Some contents", uid=50, gid=100)], 0, 4),
    ("3dir", [dir_("bar/"), dir_("foo/"), dir_("foo/bar/")], 0, 3),
    ("symlink", [dir_("foo/"), symlink("foo/bar", "../../x")], 0, 3),
    ("chunked_file", [dir_("foo/"), file("foo/big.txt", "This is such a big file")], 4, 9),
    ("recursive", [dir_("/"), dir_("bar/"), dir_("foo/"), file("foo/bar.txt", "Some")], 0, 4),
    ("block_char_fifo", [blockdev("b", 123, 456), chardev("c", 111, 222), fifo("f")], 0, 3),
    ("modes", [
        dir_("foo1/", mode=0o2755), file("foo1/bar1", "c", mode=0o4700),
        file("foo1/bar2", "c", mode=0o2755), dir_("foo2/", mode=0o1755),
        file("foo2/bar3", "c", mode=0o1755), dir_("foo3/"), file("foo3/bar4", "c", mode=0o700),
        file("foo3/bar5", "c", mode=0o755)], 0, 8),
    ("lossy", [dir_("bar/"), dir_("foo/"), file("foo/bar.txt", "Some"),
               file("stargz.index.json", "dummy")], 0, 4),
    ("hardlink", [dir_("foo/"), file("foo/foo1", "test"), link("foolink", "foo/foo1")], 0, 4),
]


@pytest.mark.parametrize("fmt,prefix", FORMAT_PREFIX)
@pytest.mark.parametrize(
    "name,ents,chunk,ref_count", MEMBER_CASES, ids=[c[0] for c in MEMBER_CASES]
)
def test_exact_number_of_gzip_members(
    name: str, ents: list[Ent], chunk: int, ref_count: int, fmt: str, prefix: str
) -> None:
    if name == "recursive" and prefix in ("/", "../"):
        ents = ents[1:]  # a "/" entry under those prefixes would not be the root
    tar = make_tar(ents, prefix, fmt)
    raw, _ = build_blob(tar, chunk_size=chunk or 4 << 20)
    assert len(gzip_members(raw)) == ref_count + (1 if ents else 2)
    frames, _ = build_blob(tar, chunk_size=chunk or 4 << 20, compression="zstd-chunked")
    # zstd: the same data frames, plus the tar-end frame, TOC and footer skippable frames
    assert len(zstd_frames(frames)) == ref_count + (1 if ents else 2) + 1


def test_chunked_file_every_offset_and_size() -> None:
    for chunk_size, length in itertools.product((3, 4), range(0, 14)):
        content = bytes(range(65, 65 + length))
        blob, _, _ = built(make_tar([file("f", content)]), chunk_size=chunk_size)
        chunks = blob.chunks("f")
        assert len(chunks) == -(-length // chunk_size)
        assert [c.chunk_offset for c in chunks] == list(range(0, length, chunk_size))
        for off in range(length + 2):
            for size in range(length + 2):
                assert blob.read_file("f", off, size) == content[off : off + size]


def test_chunk_entries_match_the_reference_shape() -> None:
    content = "This is such a big file"
    blob, _, _ = built(make_tar([dir_("foo/"), file("foo/big.txt", content)]), chunk_size=4)
    entries = [e for e in blob.toc.entries if e.name == "foo/big.txt"]
    assert [e.type for e in entries] == ["reg"] + ["chunk"] * 5
    assert [e.chunk_size for e in entries] == [4, 4, 4, 4, 4, 0]  # 0 = to the end
    assert entries[0].digest == sha(content.encode())
    assert all(e.offset > 0 for e in entries) and len({e.offset for e in entries}) == 6
    for off in range(len(content)):
        assert blob.read_file("foo/big.txt", off, 100) == content[off:].encode()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_hardlinks_resolve_to_the_same_entry_object(prefix: str) -> None:
    ents = [dir_("foo/"), file("foo/foo1", "test"), link("foolink", "foo/foo1"),
            link("foo/link2", "foolink")]
    blob, _, _ = built(make_tar(ents, prefix))
    target = blob.lookup("foo/foo1")
    assert target is blob.lookup("foolink") is blob.lookup("foo/link2")
    assert target is not None and blob.nlink(target) == 3
    assert blob.listdir("")["foolink"] is target
    assert blob.read_file("foolink", 0, 10) == b"test"


def test_directory_link_counts_and_children() -> None:
    blob, _, _ = built(make_tar([dir_("bar/"), dir_("foo/"), dir_("foo/bar/"), file("foo/x", "1")]))
    counts = {n: blob.nlink(blob.lookup(n)) for n in ("bar", "foo", "foo/bar")}  # type: ignore[arg-type]
    assert counts == {"bar": 2, "foo": 3, "foo/bar": 2}
    assert sorted(blob.listdir("foo")) == ["bar", "x"]
    assert sorted(blob.listdir("/")) == [".no.prefetch.landmark", "bar", "foo"]


def test_owners_names_written_once_per_id_but_resolved_everywhere() -> None:
    ents = [dir_("bar/", uid=50, gid=100, uname="u50", gname="g100"),
            file("bar/a", "x", uid=50, gid=100, uname="u50", gname="g100"),
            file("bar/b", "y", uid=7, gid=8)]
    blob, _, _ = built(make_tar(ents))
    raw = next(e for e in blob.toc.entries if e.name == "bar/a")
    assert (raw.uid, raw.gid, raw.user_name, raw.group_name) == (50, 100, "u50", "g100")
    assert b'"userName": "u50"' in _toc_json(make_tar(ents))
    assert _toc_json(make_tar(ents)).count(b'"userName"') == 1
    b = blob.lookup("bar/b")
    assert b is not None and (b.uid, b.gid, b.user_name) == (7, 8, "")


def _toc_json(tar: bytes) -> bytes:
    from stargz.estargz.reader import open_blob
    from stargz.estargz.source import BytesSource

    raw, _ = build_blob(tar)
    return open_blob(BytesSource(raw)).toc_json


@pytest.mark.parametrize("fmt", FORMATS)
def test_modes_keep_setuid_setgid_sticky(fmt: str) -> None:
    ents = MEMBER_CASES[9][1]
    blob, _, _ = built(make_tar(ents, "", fmt))
    for e in ents:
        got = blob.lookup(e.name)
        assert got is not None and got.mode == e.mode, e.name


def test_existing_toc_and_landmarks_are_dropped() -> None:
    ents = [file("a", "1"), file("stargz.index.json", "{}"), file(".prefetch.landmark", "\x0f"),
            file("./.no.prefetch.landmark", "\x0f"), file("b", "2")]
    for prio in ((), ("b",)):
        blob, _, _ = built(make_tar(ents), prioritized=prio)
        names = [e.name for e in blob.toc.entries]
        landmark = ".prefetch.landmark" if prio else ".no.prefetch.landmark"
        assert sorted(names) == sorted(["a", "b", landmark])
        assert blob.read_file("a", 0, 1) == b"1"


def _order(blob: VerifiedBlob) -> list[str]:
    return [e.name for e in blob.toc.entries if e.type != "chunk"]


SORT_CASES = [
    ("nolog", [file("foo.txt", "foo"), dir_("bar/"), file("bar/baz.txt", "baz")], [],
     [".no.prefetch.landmark", "foo.txt", "bar", "bar/baz.txt"]),
    ("identical", [file("foo.txt", "foo"), dir_("bar/"), file("bar/baz.txt", "baz"),
                   file("bar/bar.txt", "bar"), file("bar/baa.txt", "baa")],
     ["foo.txt", "bar/baz.txt"],
     ["foo.txt", "bar", "bar/baz.txt", ".prefetch.landmark", "bar/bar.txt", "bar/baa.txt"]),
    ("shuffle_directory", [
        file("foo.txt", "foo"), dir_("bar/"), file("bar/bar.txt", "bar"),
        file("bar/baa.txt", "baa"),
        dir_("baz/"), file("baz/baz1.txt", "baz"), file("baz/baz2.txt", "baz"), dir_("baz/bazbaz/"),
        file("baz/bazbaz/bazbaz_b.txt", "baz"), file("baz/bazbaz/bazbaz_a.txt", "baz")],
     ["baz/bazbaz/bazbaz_a.txt", "baz/baz2.txt", "foo.txt"],
     ["baz", "baz/bazbaz", "baz/bazbaz/bazbaz_a.txt", "baz/baz2.txt", "foo.txt",
      ".prefetch.landmark", "bar", "bar/bar.txt", "bar/baa.txt", "baz/baz1.txt",
      "baz/bazbaz/bazbaz_b.txt"]),
    ("shuffle_link", [file("foo.txt", "foo"), file("baz.txt", "baz"), link("bar.txt", "baz.txt"),
                      file("baa.txt", "baa")], ["baz.txt"],
     ["baz.txt", ".prefetch.landmark", "foo.txt", "bar.txt", "baa.txt"]),
    ("hardlink", [file("baz.txt", "aaaaa"), link("bazlink", "baz.txt")], ["bazlink"],
     ["baz.txt", "bazlink", ".prefetch.landmark"]),
    ("longname", [file("foo.txt", "foo"), file("a" * 120, "test"), dir_("bar/"),
                  file("bar/" + "b" * 150, "test2")], ["bar/" + "b" * 150, "a" * 120],
     ["bar", "bar/" + "b" * 150, "a" * 120, ".prefetch.landmark", "foo.txt"]),
    ("various_types", [file("foo.txt", "foo"), symlink("foo2", "foo.txt"),
                       chardev("foochar", 10, 50), blockdev("fooblock", 15, 20), fifo("fifoo")],
     ["fifoo", "foo2", "foo.txt", "fooblock"],
     ["fifoo", "foo2", "foo.txt", "fooblock", ".prefetch.landmark", "foochar"]),
    ("existing_landmark", [file("baa.txt", "baa"), file(".prefetch.landmark", "\x0f"),
                           file("foo.txt", "foo")], ["foo.txt"],
     ["foo.txt", ".prefetch.landmark", "baa.txt"]),
    ("duplicated_entry", [file("foo.txt", "foo"), dir_("bar/"), file("bar/baz.txt", "baz"),
                          dir_("bar/"), file("bar/baz.txt", "baz2")], ["bar/baz.txt"],
     ["bar", "bar/baz.txt", ".prefetch.landmark", "foo.txt"]),
]


@pytest.mark.parametrize("log_prefix,tar_prefix", list(itertools.product(PREFIXES, PREFIXES)))
@pytest.mark.parametrize("name,ents,log,want", SORT_CASES, ids=[c[0] for c in SORT_CASES])
def test_exact_entry_order_after_prioritizing(
    name: str, ents: list[Ent], log: list[str], want: list[str], log_prefix: str, tar_prefix: str
) -> None:
    blob, _, result = built(make_tar(ents, tar_prefix, "pax"),
                            prioritized=[log_prefix + p for p in log])
    assert _order(blob) == want
    assert result.missing_prioritized == ()
    landmark = blob.lookup(".prefetch.landmark" if log else ".no.prefetch.landmark")
    assert landmark is not None and blob.read_file(landmark.name, 0, 1) == b"\x0f"
    end = blob.prefetch_end()
    assert end == (landmark.offset if log else 0)
    if name == "duplicated_entry":
        assert blob.read_file("bar/baz.txt", 0, 10) == b"baz2"


def test_prioritized_files_within_prefetch_range() -> None:
    ents = [file(f"f{i}", f"content {i}" * 50) for i in range(6)]
    blob, _, _ = built(make_tar(ents), prioritized=["f4", "f1"])
    end = blob.prefetch_end()
    assert end is not None
    inside = {c.path for n in ("f4", "f1") for c in blob.chunks(n) if c.compressed_end <= end}
    assert inside == {"f4", "f1"}
    assert all(c.compressed_offset >= end for n in ("f0", "f2") for c in blob.chunks(n))


def test_missing_prioritized_file_fails_or_is_reported() -> None:
    tar = make_tar([file("foo.txt", "foo"), file("baz.txt", "baz"), file("bar.txt", "bar"),
                    file("baa.txt", "baa")])
    with pytest.raises(BuildError, match="dummy"):
        build_blob(tar, prioritized=["baa.txt", "bar.txt", "dummy"])
    blob, _, result = built(tar, prioritized=["baa.txt", "dummy1", "bar.txt", "dummy2"],
                            allow_missing_prioritized=True)
    assert result.missing_prioritized == ("dummy1", "dummy2")
    assert _order(blob) == ["baa.txt", "bar.txt", ".prefetch.landmark", "foo.txt", "baz.txt"]


def test_min_chunk_size_packs_small_files_into_one_member() -> None:
    ents = [file("a", "aaaa"), file("b", "bb"), file("big", "x" * 100), file("c", "c" * 9),
            file("d", "")]
    blob, raw, _ = built(make_tar(ents), min_chunk_size=10, chunk_size=64)
    entries = {e.name: e for e in blob.toc.entries if e.type == "reg"}
    assert entries["a"].offset == entries["b"].offset  # packed together
    assert entries["b"].inner_offset > entries["a"].inner_offset > 0
    assert entries["big"].offset > entries["b"].offset and entries["big"].inner_offset == 0
    big_tail = blob.chunks("big")[-1]  # c shares the member holding big's last chunk
    assert entries["c"].offset == big_tail.compressed_offset and entries["c"].inner_offset > 36
    for e in ents:
        assert blob.read_file(e.name, 0, 1000) == e.data
    unpacked, _ = build_blob(make_tar(ents), chunk_size=64)
    assert len(gzip_members(raw)) < len(gzip_members(unpacked))


def test_min_chunk_size_never_packs_landmarks() -> None:
    ents = [file("a", "aaaa"), file("b", "bb")]
    blob, _, _ = built(make_tar(ents), min_chunk_size=1000, prioritized=["b"])
    landmark = blob.lookup(".prefetch.landmark")
    b = blob.lookup("b")
    assert landmark is not None and b is not None
    assert landmark.inner_offset == 0 and landmark.offset > b.offset
    assert blob.prefetch_end() == landmark.offset


def test_zstd_chunked_annotations_and_footer() -> None:
    blob, raw, result = built(make_tar(BUILD_CASES["various files"]), compression="zstd-chunked")
    ann = result.annotations()
    off, comp, uncomp, kind = ann["io.containers.zstd-chunked.manifest-position"].split(":")
    assert kind == "1" and int(off) == blob.footer.toc_offset == result.toc_offset
    manifest = raw[int(off) : int(off) + int(comp)]
    assert ann["io.containers.zstd-chunked.manifest-checksum"] == sha(manifest)
    toc_json = zstandard.ZstdDecompressor().decompress(manifest)
    assert len(toc_json) == int(uncomp)
    assert ann["containerd.io/snapshot/stargz/toc.digest"] == sha(toc_json) == result.toc_digest
    assert raw[-48:-40] == b"\x50\x2a\x4d\x18\x28\x00\x00\x00" and raw.endswith(b"GnUlInUx")
    plain = decompressed(raw, "zstd-chunked")
    assert b"stargz.index.json" not in plain and plain.endswith(b"\x00" * 1024)
    assert result.diff_id == sha(plain)
    assert ann["io.containers.estargz.uncompressed-size"] == str(len(plain))


def test_gzip_annotations() -> None:
    _, raw, result = built(make_tar([file("a", "x")]))
    assert result.annotations() == {
        "containerd.io/snapshot/stargz/toc.digest": result.toc_digest,
        "io.containers.estargz.uncompressed-size": str(len(decompressed(raw))),
    }


def test_one_worker_and_many_workers_give_identical_blobs() -> None:
    ents = [file(f"d/f{i}", bytes([i]) * (i * 997)) for i in range(40)]
    tar = make_tar([dir_("d/"), *ents])
    one, _ = build_blob(tar, workers=1, chunk_size=5000)
    many, _ = build_blob(tar, workers=4, chunk_size=5000)
    assert one == many


@pytest.mark.parametrize("bad", [b"", b"not a tar at all" * 40, b"\x1f\x8b\x08garbage",
                                 b"\x28\xb5\x2f\xfdgarbage"])
def test_bad_input_is_one_build_error(bad: bytes) -> None:
    if bad == b"":
        _, result = build_blob(bad)  # an empty stream is an empty layer, as in the reference
        assert result.blob_size > 0
        return
    with pytest.raises(BuildError):
        build_blob(bad)


def test_truncated_tar_is_a_build_error() -> None:
    tar = make_tar([file("a", "x" * 5000), file("b", "y")])
    for cut in (100, 600, 3000, 5700):
        with pytest.raises(BuildError, match="truncated"):
            build_blob(tar[:cut])
        with pytest.raises(BuildError, match="truncated"):
            build_blob(tar[:cut], prioritized=["b"])


def test_bad_options_are_build_errors() -> None:
    for opts in ({"chunk_size": 0}, {"level": 10}, {"compression": "lz4"}, {"min_chunk_size": -1}):
        with pytest.raises(BuildError):
            build_blob(make_tar([]), **opts)


def test_toc_entry_fields_of_a_reg_file() -> None:
    blob, _, _ = built(make_tar([file("f", "hello", mode=0o640, uid=3, gid=4)]))
    entry = blob.lookup("f")
    assert isinstance(entry, TOCEntry)
    assert (entry.size, entry.mode, entry.uid, entry.gid, entry.modtime) == (5, 0o640, 3, 4, MTIME)
    assert entry.digest == entry.chunk_digest == sha(b"hello")


def test_prioritized_build_from_files_equals_build_from_memory(tmp_path: Path) -> None:
    tar = make_tar([dir_("d/"), file("d/a", "a" * 3000), file("b", "b" * 10), file("c", "")])
    want, _ = build_blob(tar, prioritized=["b", "d/a"])
    for name, data in (("plain.tar", tar), ("gz.tar.gz", gzip.compress(tar))):
        path = tmp_path / name
        path.write_bytes(b"HEAD" + data)
        out = io.BytesIO()
        with path.open("rb") as src:
            src.read(4)  # building starts at the file's current position
            build(src, out, BuildOptions(prioritized=["b", "d/a"], workers=2))
        assert out.getvalue() == want
