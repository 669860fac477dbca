"""`stargz store MOUNTPOINT`: serve podman's, CRI-O's and buildah's additional layer store."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from stargz import logs
from stargz.errors import ConfigError

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers

DESCRIPTION = (
    "Serve an additional layer store on MOUNTPOINT for podman, CRI-O and buildah (storage.conf: "
    "[storage.options] additionallayerstores = [\"MOUNTPOINT:ref\"]). eStargz layers of the "
    "images they pull are served lazily over FUSE (fetched on demand, verified, cached); other "
    "layers are left to them to pull. Runs in the foreground until SIGTERM/SIGINT; restarted, it "
    "serves the layers podman holds again.")


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser("store", help="serve podman/CRI-O/buildah's additional layer store",
                              description=DESCRIPTION)
    cmd.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    cmd.add_argument("--config", type=Path, metavar="FILE",
                     help="the snapshotter's TOML file: its [lazy] table (prefetch, fetches, "
                          "caches, limits, plain_http, hosts_dir) and a [store] table (root, "
                          "authfile)")
    cmd.add_argument("--root", type=Path, metavar="DIR",
                     help="state, blob copies and (by default) the chunk cache "
                          "(default /var/lib/stargz-store)")
    cmd.add_argument("--authfile", type=Path, metavar="FILE",
                     help="registry logins in containers' auth.json format, as podman's "
                          "--authfile (default: $REGISTRY_AUTH_FILE, else "
                          "$XDG_RUNTIME_DIR/containers/auth.json or /run/containers/UID/"
                          "auth.json, then ~/.config/containers/auth.json; the Docker config "
                          "after them)")
    cmd.add_argument("--plain-http", action="store_true",
                     help="talk plain HTTP to every registry (registries on loopback are "
                          "spoken to in plain HTTP anyway)")
    cmd.add_argument("--insecure-host", action="append", default=[], metavar="HOST[:PORT]",
                     help="talk plain HTTP to this registry (repeatable)")
    cmd.add_argument("--hosts-dir", type=Path, metavar="DIR",
                     help="containerd-style hosts directory: mirrors, CAs, plain HTTP")
    cmd.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics here")
    cmd.add_argument("--log-level", type=_level, metavar="LEVEL",
                     help=f"{logs.LEVEL_NAMES} (default info)")
    cmd.set_defaults(handler=run_store)


def _level(text: str) -> str:
    try:
        return logs.level_name(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_store(args: argparse.Namespace) -> int:
    from stargz.store.daemon import serve  # pyfuse3, the registry client
    from stargz.store.settings import load_settings

    settings = load_settings(
        args.mountpoint, args.config, root=args.root, authfile=args.authfile,
        insecure_hosts=tuple(args.insecure_host), plain_http_all=args.plain_http,
        hosts_dir=args.hosts_dir, metrics_address=args.metrics_address)
    logs.configure(args.log_level or args.global_log_level or ("debug" if args.debug else "info"))
    asyncio.run(serve(settings))
    return 0
