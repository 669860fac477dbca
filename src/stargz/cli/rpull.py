"""`stargz rpull IMAGE`: pull an image into containerd with lazily mounted layers."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.cli.registry_opts import add_registry_options, registry_client
from stargz.config import SnapshotterConfig
from stargz.containerd.client import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, Containerd
from stargz.containerd.rpull import (
    DEFAULT_PLATFORM,
    DEFAULT_SNAPSHOTTER,
    PullOptions,
    PullResult,
    rpull,
)
from stargz.errors import InvalidArgumentError
from stargz.registry.manifest import Platform
from stargz.registry.reference import Reference
from stargz.snapshotter.fallbacks import FALLBACKS_FILE, load_fallbacks

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

AUTH_REASON = "auth"  # fallbacks.py's reason for an AuthError
CREDENTIALS_HINT = (
    "hint: the snapshotter fetches layers with its own credentials (root's Docker config, "
    "$STARGZ_USERNAME/$STARGZ_PASSWORD for the host in $STARGZ_REGISTRY in its environment, "
    "or the CRI keychain); rpull's --user is used by rpull alone")


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "rpull", help="pull an image into containerd, mounting eStargz layers lazily",
        description="Pull IMAGE into containerd the way `ctr-remote images rpull` does: the "
                    "snapshotter mounts eStargz layers lazily; other layers are downloaded, "
                    "each with one line saying why (from the snapshotter's fallbacks.json). "
                    "Registry credentials given here (--user) are rpull's only: they never "
                    "reach the snapshotter, which fetches lazy layers with its own (root's "
                    "Docker config, $STARGZ_REGISTRY-scoped $STARGZ_USERNAME/$STARGZ_PASSWORD "
                    "in its environment, or the CRI keychain).")
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
    cmd.add_argument("--snapshotter-root", type=Path, default=Path(SnapshotterConfig().root),
                     metavar="DIR", help="the snapshotter's state directory, where it records "
                     "why layers were downloaded (default %(default)s)")
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
    started = time.time()
    async with registry_client(args, (ref,)) as registry, \
            Containerd(args.address, args.namespace) as ctd:
        result = await rpull(ctd, registry, ref, options)
    print(f"{result.name}: {result.manifest_digest}")
    print(f"layers: {len(result.lazy_layers)} lazy, {len(result.fetched_layers)} downloaded, "
          f"{len(result.present_layers)} already present")
    reasons = why_downloaded(result, args.snapshotter_root, started)
    for _, line in reasons:
        print(line)
    if any(reason == AUTH_REASON for reason, _ in reasons):
        print(CREDENTIALS_HINT)
    return 0


def why_downloaded(result: PullResult, root: Path, since: float) -> list[tuple[str, str]]:
    """(reason, line) for each downloaded layer: the reason the snapshotter recorded for it in
    this pull, under the chain id rpull asked it to prepare ("" when none is recorded)."""
    if not result.fetched_layers:
        return []
    path = root / FALLBACKS_FILE
    records = load_fallbacks(path)
    lines = []
    for layer, chain in zip(result.fetched_layers, result.fetched_chains, strict=True):
        record = records.get(chain)
        if record is not None and record.time >= since:
            lines.append((record.reason, f"layer {layer} downloaded in full ({record.reason}): "
                                         f"{record.detail}"))
        else:
            lines.append(("", f"layer {layer} downloaded in full (no reason recorded in {path}: "
                              "see the snapshotter's log)"))
    return lines
