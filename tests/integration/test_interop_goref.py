"""Interoperability with the Go reference (Debian's stargz-snapshotter 0.12.0 library), both ways.

On the reference suite's tar cases (USTAR, PAX, GNU; name prefixes "", "./", "/", "../"; tiny
chunks; every entry kind; prioritized files, one missing), a tar already holding a TOC entry,
landmarks and a repeated path, and the busybox rootfs, for gzip
eStargz and zstd:chunked:
- every blob WE build passes the Go verifier with OUR TOC digest, the Go reader lists exactly the
  entries `stargz blob ls` lists, and reads back every file's bytes as they are in the tar;
- every blob the Go library builds verifies with `stargz blob verify` and reads back with our
  reader byte for byte;
- both builders put the entries in the same order.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from stargz.cli.listing import format_entry
from stargz.cli.main import main
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.toc import clean_name
from tests.support.goharness import go_build, go_verify
from tests.support.images import (
    CASE_PRIORITIZED,
    PATH_PREFIXES,
    TAR_FORMATS,
    busybox_rootfs_tar,
    quirks_case_tar,
    reference_case_tar,
)

pytestmark = pytest.mark.integration

COMPRESSIONS = ("gzip", "zstd-chunked")
PREFIX_IDS = dict(zip(("bare", "dot", "slash", "dotdot"), PATH_PREFIXES, strict=True))
CASES = [f"{fmt}-{prefix_id}" for fmt in TAR_FORMATS for prefix_id in PREFIX_IDS]
CASES += ["quirks", "busybox"]
LANDMARKS = (".prefetch.landmark", ".no.prefetch.landmark")
BUILDER_OWNED = ("stargz.index.json", *LANDMARKS)


def case_input(case: str, tmp_path: Path) -> tuple[Path, int, tuple[str, ...]]:
    """(tar, chunk size, prioritized paths) for one case."""
    if case == "busybox":
        return busybox_rootfs_tar(), 64 << 10, ("bin/sh", "etc/motd.hardlink", "srv/data")
    if case == "quirks":
        return quirks_case_tar(tmp_path / "quirks.tar"), 4, ("app/data.txt",)
    fmt, prefix_id = case.split("-", 1)
    tar = reference_case_tar(tmp_path / f"{case}.tar", fmt, PREFIX_IDS[prefix_id])
    return tar, 4, CASE_PRIORITIZED


def cli(*argv: str | Path) -> str:
    """Run a `stargz` command in-process; returns its stdout, fails the test on non-zero."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert code == 0, err.getvalue()
    return out.getvalue()


def our_build(tar: Path, blob: Path, compression: str, chunk: int, prio: tuple[str, ...]) -> str:
    flags = ["--chunk-size", str(chunk), "--allow-missing-prioritized"]
    flags += [arg for path in prio for arg in ("--prioritize", path)]
    if compression == "zstd-chunked":
        flags.append("--zstd-chunked")
    toc_digest: str = json.loads(cli("blob", "build", tar, blob, *flags))["toc_digest"]
    return toc_digest


def our_listing(blob: Path) -> list[str]:
    return sorted(cli("blob", "ls", blob).splitlines())


def go_listing(verified: dict[str, Any]) -> list[str]:
    return sorted(
        format_entry(e["type"], e["size"], e["mode"], e["path"], e["link"], e["dev_major"],
                     e["dev_minor"])
        for e in verified["entries"]
    )


def tar_files(tar: Path) -> dict[str, bytes]:
    """Every regular file's content by cleaned path, hardlinks resolved to their target's;
    without the TOC and landmark entries a builder drops or replaces."""
    files: dict[str, bytes] = {}
    with tarfile.open(tar) as archive:
        for member in archive:
            name = clean_name(member.name)
            if name in BUILDER_OWNED:
                continue
            if member.isfile():
                f = archive.extractfile(member)
                assert f is not None
                files[name] = f.read()
            elif member.islnk():
                files[name] = files[clean_name(member.linkname)]
    return files


def tar_xattrs(tar: Path) -> dict[str, dict[str, bytes]]:
    """SCHILY.xattr PAX records by cleaned path (tarfile hands binary values back escaped)."""
    prefix = "SCHILY.xattr."
    with tarfile.open(tar) as archive:
        return {
            clean_name(m.name): {
                k[len(prefix):]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items() if k.startswith(prefix)
            }
            for m in archive if any(k.startswith(prefix) for k in m.pax_headers)
        }


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def toc_order(blob: Path) -> list[str]:
    """Cleaned names of the non-chunk TOC entries, in TOC order."""
    return [clean_name(e["name"]) for e in json.loads(cli("blob", "toc", blob))["entries"]
            if e["type"] != "chunk"]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", CASES)
def test_our_blob_passes_the_go_verifier(case: str, compression: str, tmp_path: Path) -> None:
    tar, chunk, prio = case_input(case, tmp_path)
    blob = tmp_path / "ours.blob"
    toc_digest = our_build(tar, blob, compression, chunk, prio)

    verified = go_verify(blob, toc_digest)  # raises if the TOC or any chunk does not hold

    assert verified["toc_digest"] == toc_digest
    assert go_listing(verified) == our_listing(blob)
    contents = tar_files(tar)
    go_digests = {e["path"]: e["sha256"] for e in verified["entries"] if e["type"] == "reg"}
    for landmark in LANDMARKS:
        go_digests.pop(landmark, None)
    assert go_digests == {p: sha256(d) for p, d in contents.items() if p in go_digests}
    assert set(go_digests) | {e["path"] for e in verified["entries"]
                              if e["type"] == "hardlink"} == set(contents)
    # Owners and xattrs (base64 in the Go view) agree with what our TOC says.
    with FileSource(blob) as source:
        ours = open_blob(source).verify(toc_digest)
        for e in verified["entries"]:
            if e["type"] == "hardlink":
                continue
            entry = ours.lookup(e["path"])
            assert entry is not None, e["path"]
            go_xattrs = {k: base64.b64decode(v) for k, v in (e["xattrs"] or {}).items()}
            assert (entry.uid, entry.gid, entry.xattrs) == (e["uid"], e["gid"], go_xattrs)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", CASES)
def test_go_blob_reads_back_with_ours(case: str, compression: str, tmp_path: Path) -> None:
    tar, chunk, prio = case_input(case, tmp_path)
    blob = tmp_path / "go.blob"
    built = go_build(tar, blob, chunk_size=chunk, zstd=compression == "zstd-chunked",
                     prioritized=prio, allow_missing=True)

    assert cli("blob", "verify", blob, "--toc-digest", built.toc_digest).startswith("ok: ")
    with FileSource(blob) as source:
        ours = open_blob(source).verify(built.toc_digest)
        for path, data in tar_files(tar).items():
            assert ours.read_file(path, 0, len(data)) == data, path
        for path, xattrs in tar_xattrs(tar).items():
            entry = ours.lookup(path)
            assert entry is not None and entry.xattrs == xattrs, path
    assert our_listing(blob) == go_listing(go_verify(blob, built.toc_digest))


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", ["pax-bare", "gnu-dot", "ustar-dotdot", "quirks", "busybox"])
def test_entry_order_matches_go(case: str, compression: str, tmp_path: Path) -> None:
    tar, chunk, prio = case_input(case, tmp_path)
    ours, go = tmp_path / "ours.blob", tmp_path / "go.blob"
    our_build(tar, ours, compression, chunk, prio)
    go_build(tar, go, chunk_size=chunk, zstd=compression == "zstd-chunked", prioritized=prio,
             allow_missing=True)
    assert toc_order(ours) == toc_order(go)
