"""Registry options shared by every command that talks to a registry."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.registry.retry import RetryPolicy

if TYPE_CHECKING:  # the client loads only when a command talks to a registry
    from stargz.registry.client import RegistryClient
    from stargz.registry.reference import Reference


def add_registry_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--plain-http", action="store_true",
                     help="talk plain HTTP to the registries named on the command line")
    cmd.add_argument("--insecure-host", action="append", default=[], metavar="HOST[:PORT]",
                     help="talk plain HTTP to this registry (repeatable)")
    cmd.add_argument("--hosts-dir", type=Path, metavar="DIR",
                     help="containerd-style hosts directory (DIR/<host>/hosts.toml): "
                     "mirrors, CAs, plain HTTP")
    cmd.add_argument("--timeout", type=float, default=RetryPolicy.timeout, metavar="SECONDS",
                     help="give up on a registry request that stalls this long, then retry "
                     "(default %(default)s)")
    cmd.add_argument("--retries", type=int, default=RetryPolicy.max_retries, metavar="N",
                     help="retries for resets, timeouts, 5xx and 429 (default %(default)s)")
    cmd.add_argument("--user", metavar="USER:PASSWORD",
                     help="registry credentials (default: $STARGZ_USERNAME/$STARGZ_PASSWORD, "
                     "then the Docker config)")


def registry_client(args: argparse.Namespace, refs: Iterable[Reference]) -> RegistryClient:
    from stargz.registry.client import RegistryClient
    from stargz.registry.credentials import CredentialStore
    from stargz.registry.hosts import HostsConfig

    insecure = set(args.insecure_host)
    if args.plain_http:
        insecure.update(ref.registry for ref in refs if not ref.is_layout)
    username = password = None
    if args.user:
        username, _, password = args.user.partition(":")
    return RegistryClient(
        hosts=HostsConfig.create(args.hosts_dir, insecure),
        credentials=CredentialStore.from_environment(username, password or None),
        retry=RetryPolicy(max_retries=args.retries, timeout=args.timeout),
    )
