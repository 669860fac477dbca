"""Issue 16, points 5 and 6, in the mount daemon: hostile blobs served over a real FUSE
mount by ``python -m stargz.fs.serve`` (the layer code the snapshotter and ``stargz mount``
run), limited to 1.5 GiB of address space and a timeout. Before the fix the 4 GiB chunk took
4.1 GB of RSS when read and the deep path killed the daemon with a RecursionError."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stargz.fs.mount import is_mounted
from tests.support.hostile import Crafted, deep_name, run_limited, sha, zeros

pytestmark = pytest.mark.integration
GiB = 1 << 30
MiB = 1 << 20
MEMORY = 3 * GiB // 2


def _serve_argv(mountpoint: Path, blob: Path, digest: str) -> list[str]:
    return [sys.executable, "-m", "stargz.fs.serve", str(mountpoint), f"{blob}={digest}",
            "--no-background"]


def _blob(tmp_path: Path, crafted: Crafted) -> tuple[Path, str]:
    data, digest = crafted.finish()
    path = tmp_path / "hostile.blob"
    path.write_bytes(data)
    return path, digest


def test_a_4_GiB_chunk_is_refused_when_the_layer_opens(tmp_path: Path) -> None:
    crafted = Crafted()
    offset = crafted.member(zeros("gzip", 4 * GiB))
    crafted.entries.append({"name": "bomb", "type": "reg", "size": 4 * GiB, "offset": offset,
                            "digest": sha(b"x"), "chunkDigest": sha(b"x")})
    blob, digest = _blob(tmp_path, crafted)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_limited(_serve_argv(mnt, blob, digest), memory=MEMORY, timeout=120)
    assert done.returncode == 1 and "ready" not in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "'bomb'" in done.stderr
    assert "limits.max_chunk_bytes" in done.stderr
    assert not is_mounted(mnt)


def test_a_deep_path_is_refused_when_the_layer_opens(tmp_path: Path) -> None:
    crafted = Crafted()
    crafted.file(deep_name(990), b"deep")
    blob, digest = _blob(tmp_path, crafted)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_limited(_serve_argv(mnt, blob, digest), memory=MEMORY, timeout=120)
    assert done.returncode == 1 and "ready" not in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "limits.max_path_depth" in done.stderr
    assert not is_mounted(mnt)


def test_reads_hold_no_more_than_their_chunks(tmp_path: Path) -> None:
    """A 1 MiB file in a member that inflates on to 4 GiB, and a 64 MiB file (the chunk
    limit) whose member is shared with packed small files: read through FUSE, in bounded
    memory, with the right bytes."""
    crafted = Crafted()
    offset = crafted.member(zeros("gzip", 4 * GiB))
    one = bytes(MiB)
    crafted.entries.append({"name": "one", "type": "reg", "size": MiB, "offset": offset,
                            "digest": sha(one), "chunkDigest": sha(one)})
    big = bytes(64 * MiB - 1000)
    offset = crafted.member(zeros("gzip", 64 * MiB))
    crafted.entries.append({"name": "big", "type": "reg", "size": len(big), "offset": offset,
                            "digest": sha(big), "chunkDigest": sha(big)})
    for i in range(100):  # small files packed after it in the same member
        crafted.entries.append({"name": f"small{i}", "type": "reg", "size": 10, "offset": offset,
                                "innerOffset": len(big) + 10 * i, "digest": sha(bytes(10)),
                                "chunkDigest": sha(bytes(10))})
    blob, digest = _blob(tmp_path, crafted)
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    proc = subprocess.Popen(_serve_argv(mnt, blob, digest), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=limit,
                            env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        layer = next(mnt.iterdir())
        assert (layer / "one").read_bytes() == one
        assert (layer / "big").read_bytes() == big
        assert all((layer / f"small{i}").read_bytes() == bytes(10) for i in range(100))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert not is_mounted(mnt)
