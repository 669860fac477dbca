"""Registry options shared by every command that talks to a registry."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.errors import ConfigError
from stargz.registry.retry import RetryPolicy

if TYPE_CHECKING:  # the client loads only when a command talks to a registry
    from stargz.config import MirrorConfig
    from stargz.registry.client import RegistryClient
    from stargz.registry.credentials import CredentialStore
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
    cmd.add_argument("--user", metavar="USER", type=_username,
                     help="username for the registries named on the command line (only "
                     "those); the password is read from stdin with --password-stdin, else "
                     "asked on the terminal. Default: $STARGZ_USERNAME/$STARGZ_PASSWORD for "
                     "the host in $STARGZ_REGISTRY, then the Docker config")
    cmd.add_argument("--password-stdin", action="store_true",
                     help="read the --user password from stdin (never pass it as an argument)")


def _username(text: str) -> str:
    # argparse prints this message, never the value: the value may hold a password.
    if ":" in text:
        raise argparse.ArgumentTypeError(
            "takes a username only; give the password with --password-stdin "
            "(a password in the arguments is visible to every user through ps)")
    if not text:
        raise argparse.ArgumentTypeError("the username is empty")
    return text


def credential_store(args: argparse.Namespace, refs: Iterable[Reference]) -> CredentialStore:
    """The credentials for this command: ``--user`` for the registries it names, then the
    environment's and the Docker config's (each for its own host)."""
    from stargz.registry.credentials import Credentials, CredentialStore

    hosts = [ref.registry for ref in refs if not ref.is_layout]
    if args.password_stdin and not args.user:
        raise ConfigError("--password-stdin needs --user USER")
    if not args.user:
        return CredentialStore.from_environment()
    creds = Credentials(args.user, _read_password(args))
    return CredentialStore.from_environment({host: creds for host in hosts})


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        # As docker login: the whole of stdin, less one trailing newline.
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args.user}: ")
    else:
        raise ConfigError("--user needs --password-stdin when stdin is not a terminal")
    if not password:
        raise ConfigError(f"empty password for --user {args.user}")
    return password


def registry_client(args: argparse.Namespace, refs: Iterable[Reference],
                    credentials: CredentialStore | None = None,
                    mirrors: Mapping[str, tuple[MirrorConfig, ...]] | None = None
                    ) -> RegistryClient:
    """A client for the command's registries; ``mirrors``: a config file's resolver mirrors."""
    from stargz.registry.client import RegistryClient
    from stargz.registry.hosts import HostsConfig

    refs = list(refs)
    insecure = set(args.insecure_host)
    if args.plain_http:
        insecure.update(ref.registry for ref in refs if not ref.is_layout)
    return RegistryClient(
        hosts=HostsConfig.create(args.hosts_dir, insecure, mirrors=mirrors),
        credentials=credentials if credentials is not None else credential_store(args, refs),
        retry=RetryPolicy(max_retries=args.retries, timeout=args.timeout),
    )
