"""HelloBench's images and variants: the physical limit (hellobench.physical) on real blobs
built with our writer (the footer+TOC bytes a lazy pull reads, the compressed spans of the files
a workload opens, a full pull's every byte, the requests that can not overlap); bad names
refused up front; each workload's optimize flags."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from stargz.errors import ConfigError, RuntimeIntegrationError
from stargz.hellobench.images import IMAGE_NAMES, RECIPES, build_images
from stargz.hellobench.oci import touch_parents_of_changes, tree_state
from stargz.hellobench.physical import (
    LayerBlob,
    accessed_spans,
    footer_and_toc_bytes,
    physical_limit,
)
from stargz.hellobench.variants import check_workload_run, optimize_flags, push_variants
from tests.unit.test_estargz_helpers import built, dir_, file, make_tar, symlink

MANIFEST, CONFIG = 900, 1500
RANDOM = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(8000))  # 256 kB
ENTRIES = [
    dir_("app/"),
    file("app/main.py", "print('hello')\n" * 20),
    file("app/big.bin", RANDOM),
    file("app/unused.bin", RANDOM[::-1]),
    file("app/empty", ""),
    symlink("app/link", "main.py"),
]


def test_footer_and_toc_bytes_hold_exactly_the_gzip_toc_and_footer() -> None:
    blob, data, result = built(make_tar(ENTRIES), chunk_size=64 << 10)
    tail = footer_and_toc_bytes(LayerBlob(len(data), blob))
    footer_size = blob.footer.footer_size
    # the tail minus the footer is one gzip member: the tar holding the TOC we were handed
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data[-tail:-footer_size]))) as tar:
        member = tar.extractfile("stargz.index.json")
        assert member is not None
        toc_json = member.read()
    assert "sha256:" + hashlib.sha256(toc_json).hexdigest() == result.toc_digest
    # one byte less would cut the member's gzip header
    assert data[-tail:][:2] == b"\x1f\x8b" and data[-tail - 1:][1:3] == b"\x1f\x8b"


def test_footer_and_toc_bytes_of_zstd_chunked_are_the_toc_frame_and_footer() -> None:
    blob, data, result = built(make_tar(ENTRIES), chunk_size=64 << 10,
                               compression="zstd-chunked")
    footer = blob.footer
    tail = footer_and_toc_bytes(LayerBlob(len(data), blob))
    assert tail == footer.toc_length + footer.footer_size
    toc = data[footer.toc_offset:footer.toc_offset + footer.toc_length]
    toc_json = zstandard.ZstdDecompressor().decompress(
        toc, max_output_size=footer.toc_uncompressed_length or 1 << 24)
    assert "sha256:" + hashlib.sha256(toc_json).hexdigest() == result.toc_digest


@pytest.mark.parametrize("compression", ["gzip", "zstd-chunked"])
def test_spans_of_a_file_decompress_to_its_contents(compression: str) -> None:
    blob, data, _ = built(make_tar(ENTRIES), chunk_size=64 << 10, compression=compression)
    spans = accessed_spans(blob, ["app/big.bin"])
    assert len(spans) == 1  # four 64 kB chunks, one after another in the blob
    start, end = spans[0]
    if compression == "gzip":
        plain = gzip.decompress(data[start:end])
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data[start:end]),
                                                            read_across_frames=True)
        plain = reader.read()
    # the file's bytes, then at most its tar padding and the next header
    assert plain.startswith(RANDOM) and len(plain) - len(RANDOM) < 2048
    # the file's spans are part of the blob's data, not of its TOC
    assert end <= blob.footer.toc_range(len(data))[0]


def test_paths_without_data_need_no_span() -> None:
    blob, _, _ = built(make_tar(ENTRIES), chunk_size=64 << 10)
    assert accessed_spans(blob, ["app", "app/empty", "app/link", "no/such/file", ""]) == []


def test_files_sharing_a_member_count_it_once() -> None:
    small = [dir_("etc/")] + [file(f"etc/conf{i}", f"setting {i}\n" * 10) for i in range(5)]
    blob, _, _ = built(make_tar(small), min_chunk_size=1 << 20)
    one = accessed_spans(blob, ["etc/conf0"])
    every = accessed_spans(blob, [f"etc/conf{i}" for i in range(5)])
    assert one == every and len(one) == 1


def test_prioritized_files_are_one_span_before_the_landmark() -> None:
    wanted = ["app/unused.bin", "app/main.py"]
    blob, _, _ = built(make_tar(ENTRIES), chunk_size=64 << 10, prioritized=wanted)
    spans = accessed_spans(blob, wanted)
    landmark = blob.prefetch_end()
    assert landmark is not None
    assert len(spans) == 1 and spans[0][1] <= landmark
    scattered, _, _ = built(make_tar(ENTRIES), chunk_size=64 << 10)
    assert len(accessed_spans(scattered, ["app/main.py", "app/unused.bin"])) == 2


def test_limit_of_a_lazy_image_counts_toc_and_read_spans_only() -> None:
    blob, data, _ = built(make_tar(ENTRIES), chunk_size=64 << 10)
    layer = LayerBlob(len(data), blob)
    idle = physical_limit(MANIFEST, CONFIG, [layer], {})
    assert idle.total_bytes == MANIFEST + CONFIG + len(data)
    assert idle.needed_bytes == MANIFEST + CONFIG + footer_and_toc_bytes(layer)
    assert idle.round_trips == 3  # connect, manifest, config + TOC at once
    reading = physical_limit(MANIFEST, CONFIG, [layer], {0: ["app/main.py", "app/big.bin"]})
    read = sum(end - start for start, end in accessed_spans(blob, ["app/main.py",
                                                                 "app/big.bin"]))
    assert reading.needed_bytes == idle.needed_bytes + read
    assert reading.round_trips == 4  # and the data
    assert reading.needed_bytes < reading.total_bytes


def test_a_layer_without_toc_is_needed_whole() -> None:
    gzipped = gzip.compress(make_tar(ENTRIES))
    full = physical_limit(MANIFEST, CONFIG, [LayerBlob(len(gzipped))], {0: ["app/main.py"]})
    assert full.needed_bytes == full.total_bytes == MANIFEST + CONFIG + len(gzipped)
    assert full.round_trips == 3


def test_accessed_paths_count_only_in_their_own_layer() -> None:
    lower, lower_data, _ = built(make_tar(ENTRIES), chunk_size=64 << 10)
    upper, upper_data, _ = built(make_tar([dir_("app/"), file("app/main.py", "print(2)\n")]))
    layers = [LayerBlob(len(lower_data), lower), LayerBlob(len(upper_data), upper)]
    from_upper = physical_limit(MANIFEST, CONFIG, layers, {1: ["app/main.py"]})
    tocs = footer_and_toc_bytes(layers[0]) + footer_and_toc_bytes(layers[1])
    upper_span = accessed_spans(upper, ["app/main.py"])
    assert from_upper.needed_bytes == (MANIFEST + CONFIG + tocs
                                       + sum(end - start for start, end in upper_span))
    from_lower = physical_limit(MANIFEST, CONFIG, layers, {0: ["app/big.bin"]})
    assert from_lower.needed_bytes > from_upper.needed_bytes  # 256 kB of random bytes


def test_unknown_images_and_variants_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown bench image nodejs"):
        build_images(["python", "nodejs"], tmp_path)
    with pytest.raises(ConfigError, match="unknown variant estargz-fast"):
        push_variants({}, ["gzip", "estargz-fast"], "127.0.0.1:1", peers=None, work=tmp_path,
                      cache=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing cached


def test_the_workloads_stop_at_their_ready_lines() -> None:
    assert set(IMAGE_NAMES) == {"python", "gcc", "server", "large"}
    for recipe in RECIPES.values():
        flags = optimize_flags(recipe.workload)
        assert flags[flags.index("--wait-on-line") + 1] == recipe.workload.ready_line
        entrypoint = json.loads(flags[flags.index("--entrypoint") + 1])
        args = json.loads(flags[flags.index("--args") + 1])
        assert tuple(entrypoint + args) == recipe.workload.argv


def test_an_optimize_run_counts_only_if_the_workload_ran_as_it_should() -> None:
    stopped = "stargz: the workload was stopped: --wait-on-line seen; it opened 412 files of " \
              "the image\n"
    assert check_workload_run("converting...\n" + stopped).startswith("the workload was stop")
    assert "exited with status 0" in check_workload_run(
        "stargz: the workload exited with status 0; it opened 20 files of the image\n")
    for bad in ("stargz: warning: the workload exited with status 1; it opened 3 files of the "
                "image; converting with what it read\n",
                "stargz: the workload was stopped: --period passed; it opened 9 files\n", ""):
        with pytest.raises(RuntimeIntegrationError):
            check_workload_run(bad)


BUILD_ONCE = """
import sys, time
from pathlib import Path
from stargz.hellobench.debian import cached_path

def build(work: Path, out: Path) -> None:
    with open(sys.argv[2], "a") as log:
        log.write("built\\n")
    time.sleep(0.5)  # both processes are waiting on the lock or building by now
    out.mkdir()
    (out / "layout").write_text("done")

print(cached_path(Path(sys.argv[1]), "image-v1", build))
"""


def test_concurrent_builds_of_one_cache_entry_build_it_once(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    runs = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(cache), str(log)],
                             stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=60)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert outputs == [str(cache / "image-v1")] * 3
    assert log.read_text() == "built\n"
    assert sorted(p.name for p in cache.iterdir()) == [".image-v1.lock", "image-v1"]


def test_every_parent_of_a_change_is_touched_so_the_next_layer_carries_it(
        tmp_path: Path) -> None:
    for directory in ("usr/lib/python3/dist-packages", "usr/share/doc", "etc/apt", "var/log"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "var/log/old.log").write_text("old")
    old = 1_600_000_000_000_000_000
    for directory in tmp_path.rglob("*"):
        os.utime(directory, ns=(old, old))
    before = tree_state(tmp_path)
    (tmp_path / "usr/lib/python3/dist-packages/numpy").mkdir()
    (tmp_path / "usr/lib/python3/dist-packages/numpy/core.py").write_text("x = 1\n")
    (tmp_path / "var/log/old.log").unlink()
    touch_parents_of_changes(tmp_path, before)
    touched = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
               if p.is_dir() and p.stat().st_mtime_ns != old}
    assert touched == {"usr", "usr/lib", "usr/lib/python3", "usr/lib/python3/dist-packages",
                       "usr/lib/python3/dist-packages/numpy", "var", "var/log"}
