"""`stargz convert SRC DST`: convert an image's layers to eStargz or zstd:chunked."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.cli.blob import non_negative_int, positive_int, prioritized_paths
from stargz.cli.registry_opts import add_registry_options, registry_client
from stargz.registry.reference import Reference

if TYPE_CHECKING:  # the converter loads only when a conversion runs: every command starts faster
    from stargz.cli.blob import Subparsers
    from stargz.convert.converter import ConvertOptions, ConvertResult
    from stargz.convert.store import ImageStore
    from stargz.registry.client import RegistryClient



def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "convert", help="convert an image's layers to eStargz (or zstd:chunked)",
        description="Convert every layer of SRC to eStargz and write the image as DST. "
        "SRC and DST are registry references or oci:DIR[:TAG] layouts.",
    )
    cmd.add_argument("source", metavar="SRC")
    cmd.add_argument("dest", metavar="DST")
    cmd.add_argument("--zstd-chunked", "--zstdchunked", action="store_true",
                     help="zstd:chunked layers instead of eStargz (gzip)")
    cmd.add_argument("--estargz", action="store_true",
                     help="eStargz layers (the default; accepted for ctr-remote compatibility)")
    cmd.add_argument("--oci", action="store_true",
                     help="write OCI media types even when the source uses Docker's")
    cmd.add_argument("--chunk-size", "--estargz-chunk-size", type=positive_int, metavar="N",
                     default=4 << 20, help="chunk size in bytes (default 4 MiB)")
    cmd.add_argument("--level", "--estargz-compression-level", type=non_negative_int,
                     metavar="L", default=9, help="compression level (default 9)")
    cmd.add_argument("--min-chunk-size", "--estargz-min-chunk-size", type=non_negative_int,
                     metavar="N", default=0,
                     help="pack files smaller than N bytes into shared members")
    cmd.add_argument("--prioritize", action="extend", nargs="+", default=[], metavar="PATH",
                     help="files the workload reads first, in access order")
    cmd.add_argument("--prioritize-file", type=Path, metavar="FILE",
                     help="prioritized paths, one a line (or JSON records)")
    cmd.add_argument("--estargz-record-in", type=Path, metavar="FILE",
                     help="a workload record ('ctr-remote images optimize --record-out' JSON "
                     "lines, or one path a line): its files first, in every layer that has them")
    cmd.add_argument("--allow-missing-prioritized", action="store_true",
                     help="skip prioritized paths a layer does not have")
    cmd.add_argument("--estargz-external-toc", action="store_true",
                     help="keep each layer's TOC in a separate TOC image, tagged "
                     "DST's tag + '-esgztoc' (push both to the same registry)")
    cmd.add_argument("--estargz-keep-diff-id", action="store_true",
                     help="convert without changing the layers' diff IDs (needs "
                     "--estargz-external-toc; no prioritized files)")
    cmd.add_argument("--uncompress", action="store_true",
                     help="write the layers as uncompressed tar instead (no eStargz)")
    cmd.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                     help="convert only these platforms of an index (default: all)")
    cmd.add_argument("--parallel", type=positive_int, default=2, metavar="N",
                     help="layers converted at once (default 2)")
    add_registry_options(cmd)
    cmd.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from stargz.convert.converter import ConvertOptions
    from stargz.convert.workload import read_record_paths

    source, dest = Reference.parse(args.source), Reference.parse(args.dest)
    recorded = read_record_paths(args.estargz_record_in) if args.estargz_record_in else ()
    options = ConvertOptions(
        zstd_chunked=args.zstd_chunked,
        oci=args.oci,
        chunk_size=args.chunk_size,
        level=args.level,
        min_chunk_size=args.min_chunk_size,
        prioritized=tuple(dict.fromkeys(prioritized_paths(args) + recorded)),
        # a record names the files of every layer: each layer has only some (the reference too)
        allow_missing_prioritized=args.allow_missing_prioritized or bool(recorded),
        platforms=tuple(args.platform),
        parallel_layers=args.parallel,
        external_toc=args.estargz_external_toc,
        keep_diff_id=args.estargz_keep_diff_id,
        uncompress=args.uncompress,
    )
    options.check()  # a meaningless combination fails here, before any download
    started = time.monotonic()
    result = asyncio.run(_convert(args, source, dest, options))
    elapsed = time.monotonic() - started
    print(result.digest)
    print(
        f"converted {dest}: {result.layers_converted} layers converted, "
        f"{result.layers_reused} reused, in {elapsed:.2f}s",
        file=sys.stderr,
    )
    return 0


async def _convert(
    args: argparse.Namespace, source: Reference, dest: Reference, options: ConvertOptions
) -> ConvertResult:
    from stargz.convert.converter import Converter
    from stargz.convert.progress import make_progress

    client = registry_client(args, (source, dest))
    progress = make_progress()
    try:
        converter = Converter(
            _store(client, source, create=False),
            _store(client, dest, create=True),
            options,
            progress=progress,
        )
        return await converter.convert(_source_object(source), _dest_tag(source, dest))
    finally:
        progress.close()
        await client.aclose()


def _store(client: RegistryClient, ref: Reference, *, create: bool) -> ImageStore:
    from stargz.convert.store import LayoutStore, RegistryStore
    from stargz.registry.layout import OCILayout

    if ref.layout is not None:
        return LayoutStore(OCILayout.create(ref.layout) if create else OCILayout(ref.layout))
    return RegistryStore(client, ref)


def _source_object(ref: Reference) -> str:
    if ref.is_layout:
        return ref.digest or ref.tag or ""
    return ref.object


def _dest_tag(source: Reference, dest: Reference) -> str:
    return dest.tag or source.tag or "latest"
