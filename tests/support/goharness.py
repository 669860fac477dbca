"""The Go interop harness (tests/interop/goharness/main.go), built once and cached.

It wraps the Go reference library from Debian's golang-github-containerd-stargz-snapshotter-dev
(0.12.0). The binary is cached in the test cache under the sha256 of its source, so editing
main.go rebuilds it and every other run reuses it. An instrument for tests and benchmarks only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.images import cache_dir, cached_file

SOURCE = Path(__file__).resolve().parents[1] / "interop" / "goharness" / "main.go"
GOPATH_SYSTEM = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources


def goharness_path() -> Path:
    """Path of the built harness binary, building it on first use (~30 s with a cold Go cache)."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source).hexdigest()[:16]

    def build(work: Path, out: Path) -> None:
        package = work / "goharness"
        package.mkdir(parents=True)
        shutil.copy(SOURCE, package / "main.go")
        env = {k: v for k, v in os.environ.items() if k != "GOFLAGS"}
        env.update(
            GO111MODULE="off",
            GOPATH=f"{GOPATH_SYSTEM}:{work / 'gopath'}",
            GOPROXY="off",
            GOCACHE=os.environ.get("GOCACHE") or str(cache_dir() / "go-build"),
        )
        subprocess.run(["go", "build", "-o", str(out), "main.go"], cwd=package, env=env,
                       check=True)

    return cached_file(f"goharness-{key}", build)


@dataclass(frozen=True)
class GoBuild:
    toc_digest: str
    diff_id: str
    blob_digest: str
    blob_size: int
    missed_prioritized: list[str]


def go_build(
    tar: Path, out: Path, *, chunk_size: int = 0, level: int = 9, zstd: bool = False,
    prioritized: tuple[str, ...] = (), allow_missing: bool = False,
) -> GoBuild:
    """Convert `tar` to an eStargz (or zstd:chunked) blob at `out` with the Go reference."""
    args = [str(goharness_path()), "build", f"-chunk={chunk_size}", f"-level={level}"]
    if zstd:
        args.append("-zstd")
    if prioritized:
        args.append("-prio=" + ",".join(prioritized))
    if allow_missing:
        args.append("-allow-missing")
    done = subprocess.run([*args, str(tar), str(out)], check=True, capture_output=True, text=True)
    return GoBuild(**json.loads(done.stdout))


def go_verify(blob: Path, toc_digest: str) -> dict[str, Any]:
    """Verify `blob` with the Go reference: TOC against `toc_digest`, then every chunk.

    Returns ``{"toc_digest", "chunks", "entries": [...]}``; each entry is the reference's view
    of one path (path, type, size, mode, link, uid, gid, dev_major, dev_minor, xattrs
    (base64 values), sha256 of the content read through verified chunks).
    Raises subprocess.CalledProcessError (with the harness's message in stderr) on failure.
    """
    done = subprocess.run(
        [str(goharness_path()), "verify", str(blob), toc_digest],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
