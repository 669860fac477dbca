"""`stargz snapshotter`: run the containerd remote snapshotter daemon in the foreground."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers


def register(commands: Subparsers) -> None:
    from stargz.snapshotter import daemon

    cmd = commands.add_parser("snapshotter", help="run the containerd remote snapshotter",
                              description=daemon.DESCRIPTION)
    daemon.add_arguments(cmd)
    cmd.set_defaults(handler=run_snapshotter)


def run_snapshotter(args: argparse.Namespace) -> int:
    from stargz.snapshotter import daemon

    if args.log_level is None:  # `stargz --log-level L snapshotter` (or --debug) means it too
        args.log_level = args.global_log_level or ("debug" if args.debug else None)
    return daemon.run_from_args(args)
