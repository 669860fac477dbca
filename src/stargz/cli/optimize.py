"""`stargz optimize SRC DST`: run the image's workload, then convert with what it read first.

As `ctr-remote images optimize`, without containerd: the image is mounted (lazily when it is
eStargz), the workload runs with runc while fanotify records the files it opens, and the image
is converted with each layer's files first and `.prefetch.landmark` after them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.cli.blob import non_negative_int, positive_int
from stargz.cli.registry_opts import add_registry_options, registry_client
from stargz.errors import InvalidArgumentError
from stargz.registry.reference import Reference

if TYPE_CHECKING:  # the optimizer (FUSE, converter) loads only when optimize runs
    from stargz.cli.blob import Subparsers
    from stargz.convert.converter import ConvertResult
    from stargz.optimize.optimizer import OptimizeRequest, Recording

WORKLOAD_FLAGS = ("entrypoint", "args", "env", "cwd", "user", "wait_on_line", "net_host")


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "optimize", conflict_handler="resolve",
        help="run the image's workload and convert it with the files it read first",
        description="Run SRC's workload (its entrypoint and command, or those given) with runc "
        "over the mounted image, record the files it opens, and convert SRC to eStargz as "
        "DST with each layer's recorded files first and .prefetch.landmark after them. "
        "Needs root and runc.")
    cmd.add_argument("source", metavar="SRC")
    cmd.add_argument("dest", metavar="DST")
    run = cmd.add_argument_group("the workload (default: the image's config)")
    run.add_argument("--entrypoint", type=_json_strings, metavar="JSON",
                     help='entrypoint instead of the image\'s, e.g. \'["python3","-c"]\'')
    run.add_argument("--args", type=_json_strings, metavar="JSON",
                     help="command (arguments) instead of the image's, a JSON array")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="set an environment variable (repeatable)")
    run.add_argument("--cwd", metavar="DIR", help="working directory")
    run.add_argument("--period", type=_seconds, default=10.0, metavar="SECONDS",
                     help="stop the workload after this long (default 10)")
    run.add_argument("--wait-on-line", metavar="TEXT", default="",
                     help="stop the workload once a line of its stdout contains TEXT")
    run.add_argument("--net-host", action="store_true",
                     help="the host's network (default: a network namespace of its own, "
                     "loopback only)")
    run.add_argument("--fail-on-workload-error", action="store_true",
                     help="a workload exiting non-zero fails the command (default: convert "
                     "with what it read)")
    records = cmd.add_argument_group("records")
    records.add_argument("--record-out", type=Path, metavar="FILE",
                         help="write the access record (ctr-remote's JSON lines)")
    records.add_argument("--record-in", type=Path, metavar="FILE",
                         help="use this record instead of running the workload")
    records.add_argument("--prioritize-file", type=Path, metavar="FILE",
                         help="more files to put first, after the recorded ones: one path or "
                         "glob (*, ?, [...], **) a line, # for comments")
    _add_convert_options(cmd)
    add_registry_options(cmd)
    # the workload's user keeps ctr-remote's --user; the registry's becomes --registry-user
    run.add_argument("--user", dest="run_user", metavar="USER[:GROUP]",
                     help="run the workload as this user (name or id) instead of the image's")
    cmd.add_argument("--registry-user", dest="user", metavar="USER",
                     type=_registry_username,
                     help="username for the registries named on the command line; the "
                     "password from --password-stdin, else asked on the terminal")
    cmd.set_defaults(handler=run_optimize)


def _add_convert_options(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_argument_group("conversion (as stargz convert)")
    group.add_argument("--zstd-chunked", "--zstdchunked", action="store_true",
                       help="zstd:chunked layers instead of eStargz (gzip)")
    group.add_argument("--oci", action="store_true",
                       help="write OCI media types even when the source uses Docker's")
    group.add_argument("--chunk-size", "--estargz-chunk-size", type=positive_int, metavar="N",
                       default=4 << 20, help="chunk size in bytes (default 4 MiB)")
    group.add_argument("--level", "--estargz-compression-level", type=non_negative_int,
                       metavar="L", default=9, help="compression level (default 9)")
    group.add_argument("--min-chunk-size", "--estargz-min-chunk-size", type=non_negative_int,
                       metavar="N", default=0,
                       help="pack files smaller than N bytes into shared members")
    group.add_argument("--estargz-external-toc", action="store_true",
                       help="keep each layer's TOC in a separate TOC image (DST's tag + "
                       "'-esgztoc')")
    group.add_argument("--parallel", type=positive_int, default=2, metavar="N",
                       help="layers converted at once (default 2)")


def _registry_username(text: str) -> str:
    from stargz.cli.registry_opts import _username

    return _username(text)


def _json_strings(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON array of strings")
    return tuple(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _request(args: argparse.Namespace) -> OptimizeRequest:
    from stargz.convert.converter import ConvertOptions
    from stargz.optimize.optimizer import OptimizeRequest, WorkloadOverrides
    from stargz.optimize.sandbox import RunOptions

    if args.record_in is not None:
        given = [f"--{name.replace('_', '-')}" for name in WORKLOAD_FLAGS if getattr(args, name)]
        given += ["--user"] if args.run_user else []
        if given:
            raise InvalidArgumentError(f"--record-in runs no workload: {', '.join(given)} "
                                       "would do nothing")
    convert = ConvertOptions(
        zstd_chunked=args.zstd_chunked, oci=args.oci, chunk_size=args.chunk_size,
        level=args.level, min_chunk_size=args.min_chunk_size,
        external_toc=args.estargz_external_toc, parallel_layers=args.parallel)
    convert.check()  # a meaningless combination fails here, before anything runs
    return OptimizeRequest(
        source=Reference.parse(args.source),
        convert=convert,
        overrides=WorkloadOverrides(entrypoint=args.entrypoint, args=args.args,
                                    env=tuple(args.env), cwd=args.cwd, user=args.run_user),
        run=RunOptions(period=args.period, wait_on_line=args.wait_on_line,
                       net_host=args.net_host),
        record_in=args.record_in,
        record_out=args.record_out,
        prioritize=read_prioritize_file(args.prioritize_file) if args.prioritize_file else (),
        fail_on_workload_error=args.fail_on_workload_error,
    )


def read_prioritize_file(path: Path) -> tuple[str, ...]:
    """Paths and globs, one a line (blank lines and # comments skipped), or JSON records."""
    from stargz.convert.workload import read_record_paths

    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise InvalidArgumentError(f"can not read {path}: {err.strerror}") from None
    if text.lstrip().startswith("{"):
        return read_record_paths(path)
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def run_optimize(args: argparse.Namespace) -> int:
    request = _request(args)
    dest = Reference.parse(args.dest)
    started = time.monotonic()
    recording, result = asyncio.run(_optimize(args, request, dest))
    layers = recording.per_layer()
    print(result.digest)
    print(f"optimized {dest}: {sum(map(len, layers.values()))} files first in "
          f"{len(layers)} of {len(recording.manifest.layers())} layers; "
          f"{result.layers_converted} layers converted, in {time.monotonic() - started:.2f}s",
          file=sys.stderr)
    return 0


async def _optimize(args: argparse.Namespace, request: OptimizeRequest,
                    dest: Reference) -> tuple[Recording, ConvertResult]:
    from stargz.cli.convert import _dest_tag, _source_object, _store
    from stargz.convert.progress import make_progress
    from stargz.optimize.optimizer import convert, record, write_record

    source = request.source
    async with registry_client(args, (source, dest)) as client:
        recording = await record(request, client)
        if request.record_out is not None:
            write_record(recording, request.record_out)
        progress = make_progress()
        try:
            result = await convert(recording, request, _store(client, source, create=False),
                                   _store(client, dest, create=True), _source_object(source),
                                   _dest_tag(source, dest), progress)
        finally:
            progress.close()
    return recording, result
