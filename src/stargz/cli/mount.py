"""`stargz mount IMAGE MOUNTPOINT` and `stargz umount MOUNTPOINT`.

``mount`` forks a daemon that serves the image and returns once the mount is usable (the daemon
reports over a pipe: ``ready`` or the one-line error that stopped it); ``--foreground`` serves
from this process instead. The daemon logs to ``<state dir>/daemon.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.cli.registry_opts import add_registry_options, credential_store, registry_client
from stargz.config import Config, FileConfig, load_file_config
from stargz.errors import InvalidArgumentError, RuntimeIntegrationError, StargzError
from stargz.imagemount import DEFAULT_STATE_ROOT
from stargz.imagemount.secrets import scrub_environment
from stargz.printable import printable
from stargz.registry.manifest import Platform
from stargz.registry.reference import Reference

if TYPE_CHECKING:  # the daemon's modules load pyfuse3: only `mount` and `umount` import them
    from collections.abc import Callable

    from stargz.imagemount.daemon import MountRequest
    from stargz.imagemount.layers import OpenLayer
    from stargz.registry.credentials import CredentialStore

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
    OnReady = Callable[[list[OpenLayer]], None]

READY = b"ready\n"


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "mount", help="mount an image's root filesystem, pulling eStargz layers lazily",
        description="Mount IMAGE on MOUNTPOINT: eStargz layers are served lazily over FUSE "
                    "(fetched on demand, verified, cached), other layers are downloaded in "
                    "full; overlayfs stacks them. Returns once the mount is usable; a daemon "
                    "keeps serving it until `stargz umount MOUNTPOINT`.")
    cmd.add_argument("image", metavar="IMAGE", help="image reference, e.g. host:5000/repo:tag")
    cmd.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    cmd.add_argument("--rw", action="store_true",
                     help="writable mount (changes go to an upper dir removed at umount)")
    cmd.add_argument("--allow-setuid-and-devices", action="store_true",
                     help="honour the image's setuid/setgid bits and device nodes: grants root "
                          "to anyone who can run the image's binaries (default: nosuid,nodev)")
    cmd.add_argument("--foreground", action="store_true",
                     help="serve from this process until interrupted")
    cmd.add_argument("--config", type=Path, metavar="FILE",
                     help="TOML file: prefetch, background fetch, [blob] and [cache] settings")
    cmd.add_argument("--cache-dir", metavar="DIR",
                     help="on-disk chunk cache (overrides the config's [cache] directory)")
    cmd.add_argument("--no-background-fetch", action="store_true",
                     help="fetch only what is read (and prefetched)")
    cmd.add_argument("--platform", type=_platform, help="platform to pick from an index")
    cmd.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics here")
    _add_state_root(cmd)
    add_registry_options(cmd)
    cmd.set_defaults(handler=run_mount)

    umount = commands.add_parser(
        "umount", help="unmount an image mounted by `stargz mount`",
        description="Stop the daemon serving MOUNTPOINT and unmount it; also cleans up the "
                    "mounts a killed daemon left behind.")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    umount.add_argument("-l", "--lazy", "-f", "--force", dest="lazy", action="store_true",
                        help="detach even when busy: processes still inside lose their files")
    _add_state_root(umount)
    umount.set_defaults(handler=run_umount)


def _add_state_root(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_ROOT, metavar="DIR",
                     help="where mount daemons keep their state (default %(default)s)")


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except InvalidArgumentError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@functools.lru_cache(maxsize=1)
def _file_config(path: Path | None) -> FileConfig:
    """The config file, read once per process (the forked daemon inherits it)."""
    return load_file_config(path)


def _layer_config(args: argparse.Namespace) -> Config:
    config = _file_config(args.config).layer
    if args.cache_dir:
        config = replace(config, cache=replace(config.cache, directory=args.cache_dir))
    if args.no_background_fetch:
        config = replace(config, no_background_fetch=True)
    return config


def _request(args: argparse.Namespace) -> MountRequest:
    from stargz.imagemount.daemon import MountRequest
    from stargz.imagemount.state import MountState

    return MountRequest(
        image=Reference.parse(args.image),
        state=MountState.of(args.mountpoint, args.state_dir),
        writable=args.rw,
        config=_layer_config(args),
        platform=args.platform,
        metrics_address=args.metrics_address or _metrics_address(_file_config(args.config)),
        allow_setuid_and_devices=args.allow_setuid_and_devices,
    )


def run_mount(args: argparse.Namespace) -> int:
    request = _request(args)  # bad arguments and config fail here, before any fork
    # Read here, from stdin or the terminal, before the fork; the daemon holds the password
    # in memory only: neither its arguments nor its environment show it.
    credentials = credential_store(args, [request.image])
    scrub_environment()
    if args.foreground:
        asyncio.run(_serve(args, request, credentials,
                           lambda layers: _print_ready(request, layers)))
        return 0
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        os._exit(_daemon(args, request, credentials, write_end))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer == READY:
        print(f"{request.image} mounted on {request.state.mountpoint}")
        return 0
    message = answer.decode(errors="replace").strip()
    raise RuntimeIntegrationError(message or "the mount daemon exited before the mount was "
                                  f"ready (log: {request.state.log_file})")


def _metrics_address(config: FileConfig) -> str | None:
    return None if config.daemon.no_prometheus else config.daemon.metrics_address or None


def _print_ready(request: MountRequest, layers: list[OpenLayer]) -> None:
    lazy = sum(1 for layer in layers if layer.lazy)
    print(f"{request.image} mounted on {request.state.mountpoint} ({lazy} of {len(layers)} "
          "layers lazy); serving until interrupted", flush=True)


async def _serve(args: argparse.Namespace, request: MountRequest, credentials: CredentialStore,
                 on_ready: OnReady) -> None:
    from stargz.imagemount.daemon import serve_image

    mirrors = _file_config(args.config).mirrors
    async with registry_client(args, [request.image], credentials, mirrors) as registry:
        await serve_image(request, registry, on_ready)


def _daemon(args: argparse.Namespace, request: MountRequest, credentials: CredentialStore,
            pipe: int) -> int:
    """The forked daemon: its own session; stdio goes to its log once the mount is ready (so
    that whoever ran `stargz mount` is not held by our copies of its stdout and stderr)."""
    os.setsid()
    reported = False

    def ready(_layers: list[OpenLayer]) -> None:
        nonlocal reported
        _detach_stdio(request.state.log_file)
        os.write(pipe, READY)
        os.close(pipe)
        reported = True

    try:
        asyncio.run(_serve(args, request, credentials, ready))
        return 0
    except (StargzError, OSError) as err:
        if reported:  # stderr is the log by now
            print(f"stargz: error: {printable(str(err))}", file=sys.stderr)
        else:  # `stargz mount` prints it
            os.write(pipe, f"{' '.join(str(err).split())}\n".encode())
        return 1
    except KeyboardInterrupt:
        return 130


def _detach_stdio(log_file: Path) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)


def run_umount(args: argparse.Namespace) -> int:
    from stargz.imagemount.state import MountState, cleanup, stop_daemon

    state = MountState.of(args.mountpoint, args.state_dir)
    if not args.lazy and state.daemon_pid() is not None:
        _unmount_unless_busy(state.mountpoint)  # a busy mount stays, and keeps working
    stopped = stop_daemon(state)
    cleaned = cleanup(state)
    if not (stopped or cleaned):
        raise InvalidArgumentError(f"{state.mountpoint} is not mounted by stargz")
    if not stopped:
        print(f"{state.mountpoint}: cleaned up after a daemon that is gone", file=sys.stderr)
    return 0


def _unmount_unless_busy(mountpoint: Path) -> None:
    """Unmount the image (not lazily); a mount something still uses is left as it is."""
    import subprocess

    from stargz.fs.mount import is_mounted

    if not is_mounted(mountpoint):
        return
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 and "busy" in done.stderr:
        raise RuntimeIntegrationError(
            f"{mountpoint} is busy (a process has a file or its working directory in it); "
            "nothing was unmounted: end those processes, or detach it anyway with "
            "`stargz umount --lazy`")

