"""`stargz get-toc-digest REF LAYER-DIGEST`: a remote layer's TOC digest, read by ranges."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import TYPE_CHECKING

from stargz.cli.registry_opts import add_registry_options, registry_client
from stargz.config import LimitsConfig
from stargz.errors import InvalidArgumentError
from stargz.estargz.reader import UnverifiedBlob
from stargz.layer.externaltoc import TOCImage
from stargz.layer.opening import fetch_tail, open_tail
from stargz.layer.stats import LayerStats
from stargz.registry.reference import Reference, validate_digest
from stargz.remote.fetcher import RegistryBlobFetcher

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers

OPEN_TIMEOUT_S = 120.0


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "get-toc-digest", help="print a remote eStargz layer's TOC digest",
        description="Read a layer's footer and TOC from the registry with range requests "
        "(nothing else is downloaded) and print the TOC digest.",
    )
    cmd.add_argument("image", metavar="REF",
                     help="the image (its repository; its tag finds an external TOC)")
    cmd.add_argument("layer", metavar="LAYER-DIGEST", help="sha256:<64 hex digits>")
    cmd.add_argument("--dump-toc", action="store_true", help="print the TOC JSON instead")
    add_registry_options(cmd)
    cmd.set_defaults(handler=run_get_toc_digest)


def run_get_toc_digest(args: argparse.Namespace) -> int:
    ref = Reference.parse(args.image)
    blob = asyncio.run(open_remote_layer(args, ref, layer_digest(args.layer)))
    if args.dump_toc:
        sys.stdout.buffer.write(blob.toc_json)
        sys.stdout.buffer.write(b"\n")
    else:
        print(blob.toc_digest)
    return 0


def layer_digest(text: str) -> str:
    """``text`` checked as a digest; a bare hex string gets a hint instead of a traceback."""
    if re.fullmatch(r"[0-9a-f]{64}", text):
        raise InvalidArgumentError(f"layer digest {text!r} names no algorithm: write "
                                   f"sha256:{text}")
    return validate_digest(text)


async def open_remote_layer(
    args: argparse.Namespace, ref: Reference, digest: str
) -> UnverifiedBlob:
    async with registry_client(args, (ref,)) as client:
        repo = ref.repo_only()
        size = await client.head_blob(repo, digest)
        fetcher = RegistryBlobFetcher(client, repo, digest, size)
        stats = LayerStats(size=size)
        tail = await fetch_tail(fetcher, OPEN_TIMEOUT_S, stats, digest)
        toc_image = TOCImage(client, ref, LimitsConfig().max_toc_bytes) if ref.tag else None
        external = (lambda: toc_image.toc_of(digest)) if toc_image is not None else None
        return await open_tail(tail, stats, digest, external)
