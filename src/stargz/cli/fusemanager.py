"""`stargz fuse-manager`: serve the lazy layers' FUSE mount in a process that outlives the
snapshotter (see stargz.snapshotter.fusemanager)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers

DEFAULT_ROOT = "/var/lib/stargz-fuse-manager"


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "fuse-manager", help="serve lazy layers for the snapshotter, outliving its restarts",
        description="Serve the lazy layers' FUSE mount and the layer service for the "
        "snapshotter ([fuse_manager] enable = true), so that running containers keep reading "
        "when the snapshotter is stopped, killed or upgraded. SIGTERM unmounts.")
    cmd.add_argument("--config", type=Path, help="the config file (the snapshotter's)")
    cmd.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT),
                     help=f"state: the chunk cache, the FUSE mount, what is served "
                     f"(default {DEFAULT_ROOT})")
    cmd.add_argument("--address", type=Path,
                     help="unix socket (default: [fuse_manager] address of the config)")
    cmd.set_defaults(handler=run_fuse_manager)


def run_fuse_manager(args: argparse.Namespace) -> int:
    from stargz import logs
    from stargz.config import load_file_config
    from stargz.errors import ConfigError
    from stargz.snapshotter.fusemanager import serve
    from stargz.snapshotter.lazy import settings_from_config

    logs.configure(args.global_log_level or ("debug" if args.debug else "info"))
    file = load_file_config(args.config)
    root = args.root.absolute()
    settings = settings_from_config(file, root, str(args.config or "defaults"))
    if settings is None:
        raise ConfigError("the config switches lazy layers off: nothing for a FUSE manager")
    address = (args.address or Path(file.fuse_manager.address)).absolute()
    try:
        asyncio.run(serve(settings, root, address))
    except KeyboardInterrupt:
        return 130
    print("stargz fuse-manager: stopped", file=sys.stderr)
    return 0
