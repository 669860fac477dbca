"""`stargz rpull IMAGE`: pull an image into containerd with lazily mounted layers."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.cli.registry_opts import add_registry_options, registry_client
from stargz.containerd.client import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, Containerd
from stargz.containerd.rpull import DEFAULT_PLATFORM, DEFAULT_SNAPSHOTTER, PullOptions, rpull
from stargz.errors import InvalidArgumentError
from stargz.registry.manifest import Platform
from stargz.registry.reference import Reference

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "rpull", help="pull an image into containerd, mounting eStargz layers lazily",
        description="Pull IMAGE into containerd the way `ctr-remote images rpull` does: the "
                    "snapshotter mounts eStargz layers lazily; other layers are downloaded.")
    cmd.add_argument("image", metavar="IMAGE", help="image reference, e.g. host:5000/repo:tag")
    cmd.add_argument("--address", type=Path,
                     default=Path(os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_ADDRESS),
                     help="containerd socket (default $CONTAINERD_ADDRESS or %(default)s)")
    cmd.add_argument("--namespace", default=os.environ.get("CONTAINERD_NAMESPACE")
                     or DEFAULT_NAMESPACE,
                     help="containerd namespace (default $CONTAINERD_NAMESPACE or %(default)s)")
    cmd.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER,
                     help="containerd snapshotter to unpack into (default %(default)s)")
    cmd.add_argument("--platform", type=_platform, default=DEFAULT_PLATFORM,
                     help="platform to pick from an index (default %(default)s)")
    add_registry_options(cmd)
    cmd.set_defaults(handler=run_rpull)


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except InvalidArgumentError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_rpull(args: argparse.Namespace) -> int:
    return asyncio.run(_rpull(args))


async def _rpull(args: argparse.Namespace) -> int:
    ref = Reference.parse(args.image)
    options = PullOptions(snapshotter=args.snapshotter, platform=args.platform)
    async with registry_client(args, (ref,)) as registry, \
            Containerd(args.address, args.namespace) as ctd:
        result = await rpull(ctd, registry, ref, options)
    print(f"{result.name}: {result.manifest_digest}")
    print(f"layers: {len(result.lazy_layers)} lazy, {len(result.fetched_layers)} downloaded, "
          f"{len(result.present_layers)} already present")
    return 0
