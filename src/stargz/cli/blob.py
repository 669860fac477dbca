"""`stargz blob ...`: build, verify and inspect single eStargz / zstd:chunked blobs."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from stargz.cli.listing import filesystem_view, format_toc_entry
from stargz.errors import ConfigError, VerificationError
from stargz.estargz.extract import extract
from stargz.estargz.reader import VerifiedBlob, open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.writer import BuildOptions, build
from stargz.printable import printable_json

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def toc_digest_arg(text: str) -> str:
    if not _DIGEST_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256:<64 hex digits> digest")
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def register(commands: Subparsers) -> None:
    group = commands.add_parser("blob", help="build, verify and inspect one eStargz blob",
                                description="Build, verify and inspect one eStargz blob.")
    sub = group.add_subparsers(title="blob commands", metavar="COMMAND", required=True)
    _register_build(sub)
    cmd = sub.add_parser("verify", help="check the TOC digest and every chunk of a blob")
    cmd.add_argument("blob", metavar="BLOB", type=Path)
    cmd.add_argument("--toc-digest", required=True, type=toc_digest_arg, metavar="DIGEST")
    cmd.set_defaults(handler=run_verify)
    cmd = sub.add_parser("ls", help="list a blob's entries: type, size, mode, path, link target")
    cmd.add_argument("blob", metavar="BLOB", type=Path)
    cmd.add_argument("--toc-digest", type=toc_digest_arg, metavar="DIGEST",
                     help="check the TOC against this digest first")
    cmd.set_defaults(handler=run_ls)
    cmd = sub.add_parser(
        "toc", help="print a blob's TOC JSON, byte for byte as stored",
        description="Print a blob's TOC JSON, byte for byte as stored; on a terminal, control "
                    "characters in it are shown as \\uXXXX escapes (the same JSON).")
    cmd.add_argument("blob", metavar="BLOB", type=Path)
    cmd.add_argument("--toc-digest", type=toc_digest_arg, metavar="DIGEST",
                     help="check the TOC against this digest first")
    cmd.set_defaults(handler=run_toc)
    cmd = sub.add_parser("extract", help="extract a blob's files into a directory, safely")
    cmd.add_argument("blob", metavar="BLOB", type=Path)
    cmd.add_argument("dest", metavar="DIR", type=Path)
    cmd.add_argument("--toc-digest", type=toc_digest_arg, metavar="DIGEST",
                     help="verify against this TOC digest (without it, a warning: unverified)")
    cmd.set_defaults(handler=run_extract)


def _register_build(sub: Subparsers) -> None:
    cmd = sub.add_parser(
        "build", help="convert a tar layer (plain, gzip or zstd) to eStargz or zstd:chunked",
        description="Convert a tar layer to eStargz (or zstd:chunked); prints one JSON object: "
        "toc_digest, diff_id, blob_digest, blob_size, uncompressed_size.",
    )
    cmd.add_argument("input", metavar="IN", help="the layer tar, or - for stdin")
    cmd.add_argument("output", metavar="OUT", type=Path)
    cmd.add_argument("--zstd-chunked", action="store_true", help="zstd frames instead of gzip")
    cmd.add_argument("--chunk-size", type=positive_int, metavar="N",
                     help="split files into chunks of N bytes (default 4 MiB)")
    cmd.add_argument("--level", type=non_negative_int, metavar="L", help="compression level")
    cmd.add_argument("--min-chunk-size", type=non_negative_int, metavar="N",
                     help="pack files smaller than N bytes into shared members")
    cmd.add_argument("--prioritize", action="extend", nargs="+", default=[], metavar="PATH",
                     help="put these paths first (the workload's files, in access order)")
    cmd.add_argument("--prioritize-file", type=Path, metavar="FILE",
                     help="prioritized paths, one a line, after any --prioritize")
    cmd.add_argument("--allow-missing-prioritized", action="store_true",
                     help="ignore prioritized paths the layer does not have")
    cmd.set_defaults(handler=run_build)


def prioritized_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """--prioritize paths, then --prioritize-file's (one a line, or the reference's JSON
    records: ``stargz.convert.workload``)."""
    from stargz.convert.workload import read_record_paths

    paths: list[str] = list(args.prioritize)
    if args.prioritize_file is not None:
        paths += read_record_paths(args.prioritize_file)
    return tuple(paths)


def _build_options(args: argparse.Namespace) -> BuildOptions:
    given = {
        "chunk_size": args.chunk_size,
        "level": args.level,
        "min_chunk_size": args.min_chunk_size,
    }
    return BuildOptions(
        **{k: v for k, v in given.items() if v is not None},
        prioritized=prioritized_paths(args),
        allow_missing_prioritized=args.allow_missing_prioritized,
        compression="zstd-chunked" if args.zstd_chunked else "gzip",
    )


@contextlib.contextmanager
def _input_stream(name: str) -> Iterator[BinaryIO]:
    """The input tar; stdin is spooled to a temporary file when it can not seek."""
    if name != "-":
        with open(name, "rb") as f:
            yield f
        return
    stdin = sys.stdin.buffer
    if stdin.seekable():
        yield stdin
        return
    with tempfile.TemporaryFile(prefix="stargz-stdin-") as spool:
        shutil.copyfileobj(stdin, spool, 1 << 20)
        spool.seek(0)
        yield spool


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, renamed into place only on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def run_build(args: argparse.Namespace) -> int:
    options = _build_options(args)
    with _input_stream(args.input) as src, _atomic_output(args.output) as dst:
        result = build(src, dst, options)
    summary = {
        "toc_digest": result.toc_digest,
        "diff_id": result.diff_id,
        "blob_digest": result.blob_digest,
        "blob_size": result.blob_size,
        "uncompressed_size": result.uncompressed_size,
    }
    print(json.dumps(summary))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    with FileSource(args.blob) as source:
        unverified = open_blob(source)
        blob = unverified.verify(args.toc_digest)
        files, chunks = verify_all_chunks(blob, source)
    print(f"ok: TOC {blob.toc_digest}, {files} files, {chunks} chunks verified")
    return 0


def verify_all_chunks(blob: VerifiedBlob, source: FileSource) -> tuple[int, int]:
    """Decode and check every chunk of every regular file, and each file's whole digest.

    Returns (files, chunks) checked. In blob order: each member is read and decompressed
    once, and memory holds one member's chunks and a hash per file."""
    files = chunks = 0
    current, whole = "", hashlib.sha256()
    for chunk, data in blob.verified_chunks():
        if chunk.path != current:
            _check_whole(blob, current, whole)
            current, whole = chunk.path, hashlib.sha256()
            files += 1
        whole.update(data)
        chunks += 1
    _check_whole(blob, current, whole)
    return files, chunks


def _check_whole(blob: VerifiedBlob, path: str, whole: hashlib._Hash) -> None:
    entry = blob.lookup(path) if path else None
    if entry is not None and entry.digest and f"sha256:{whole.hexdigest()}" != entry.digest:
        raise VerificationError(f"{entry.name}: content does not match its digest")


def run_ls(args: argparse.Namespace) -> int:
    with FileSource(args.blob) as source:
        unverified = open_blob(source)
        if args.toc_digest is not None:
            unverified.verify(args.toc_digest)
    for entry in filesystem_view(unverified.toc.entries):
        print(format_toc_entry(entry))
    return 0


def run_toc(args: argparse.Namespace) -> int:
    with FileSource(args.blob) as source:
        unverified = open_blob(source)
        if args.toc_digest is not None:
            unverified.verify(args.toc_digest)
    # The TOC exactly as stored, so `stargz blob toc B | sha256sum` shows the TOC digest; a
    # terminal gets control characters escaped (a name's ESC sequences would drive it).
    binary_out = getattr(sys.stdout, "buffer", None)  # None when stdout is redirected to text
    if sys.stdout.isatty():
        sys.stdout.write(printable_json(unverified.toc_json.decode("utf-8", "surrogateescape")))
        return 0
    if binary_out is None:
        sys.stdout.write(unverified.toc_json.decode("utf-8", "surrogateescape"))
        return 0
    sys.stdout.flush()
    binary_out.write(unverified.toc_json)
    binary_out.flush()
    return 0


def run_extract(args: argparse.Namespace) -> int:
    if args.dest.exists() and not args.dest.is_dir():
        raise ConfigError(f"{args.dest} exists and is not a directory")
    with FileSource(args.blob) as source:
        unverified = open_blob(source)
        if args.toc_digest is not None:
            blob = unverified.verify(args.toc_digest)
        else:
            blob = unverified.skip_verification("stargz blob extract without --toc-digest")
        args.dest.mkdir(parents=True, exist_ok=True)
        extract(blob, args.dest)
    return 0
