"""The snapshotter daemon: ``stargz snapshotter [--config FILE]``.

Serves containerd's Snapshots gRPC API on a unix socket (register it in containerd's config as
``[proxy_plugins.stargz] type = "snapshot", address = <socket>``, see contrib/) until SIGTERM or
SIGINT, then stops accepting calls, lets running ones finish briefly and closes the metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

# gRPC's C core logs its own errors (E1202 ... add_port.cc) besides the one we report
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
import grpc

from stargz import logs, sdnotify, trace
from stargz.config import FileConfig, load_file_config
from stargz.errors import ConfigError, RuntimeIntegrationError, StargzError
from stargz.snapshotter.api import snapshots_pb2_grpc
from stargz.snapshotter.remote import RemoteLayers
from stargz.snapshotter.service import SnapshotsService
from stargz.snapshotter.snapshotter import Snapshotter

if TYPE_CHECKING:
    from stargz.cri.proxy import CriImageProxy, CriKeychainSettings

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = Path(FileConfig().snapshotter.address)  # defaults live in stargz.config
DEFAULT_ROOT = Path(FileConfig().snapshotter.root)
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class SnapshotterConfig:
    address: Path = DEFAULT_ADDRESS  # unix socket containerd's proxy plugin dials
    root: Path = DEFAULT_ROOT  # metadata.sqlite and snapshots/ live here
    log_level: str = "info"


def load_config(path: Path | None) -> SnapshotterConfig:
    """The ``[snapshotter]`` table (keys ``address``, ``root``, ``log_level``) of a config
    file (``stargz.config``: unknown keys are refused)."""
    return snapshotter_config(load_file_config(path), str(path))


def snapshotter_config(file: FileConfig, where: str) -> SnapshotterConfig:
    table = file.snapshotter
    return SnapshotterConfig(address=_absolute_path(where, "address", table.address),
                             root=_absolute_path(where, "root", table.root),
                             log_level=_log_level(table.log_level))


def _absolute_path(where: str, key: str, value: str) -> Path:
    if not value.startswith("/"):
        raise ConfigError(f"config {where}: key 'snapshotter.{key}' must be an absolute path, "
                          f"not {value!r}")
    return Path(value)


def _log_level(name: str) -> str:
    return logs.level_name(name)


async def serve(config: SnapshotterConfig, remote: RemoteLayers | None = None,
                cri: CriKeychainSettings | None = None) -> None:
    """Serve until SIGTERM/SIGINT. ``remote`` is the lazy-layer hook (None: always fall back);
    ``cri``: also serve the CRI ImageService, kept credentials and all (``stargz.cri.proxy``)."""
    with trace.span("startup_metadata"):
        snapshotter = Snapshotter(config.root, remote)
    try:
        with trace.span("startup_restore"):
            await snapshotter.restore_remote()
        server = grpc.aio.server()
        servicer = SnapshotsService(snapshotter)
        # the generated registration function carries no annotations
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        cri_proxy = _add_cri_proxy(server, cri)
        _claim_socket(config.address)
        try:
            with trace.span("startup_grpc"):
                _listen(server, config.address)
                await server.start()
            trace.event("startup_socket_ready")
            log.info("serving containerd snapshots on %s (root %s)", config.address, config.root)
            ready = asyncio.create_task(_announce_ready(remote))
            await _wait_for_signal()
            ready.cancel()
            log.info("shutting down")
            sdnotify.notify("STOPPING=1")
            await server.stop(SHUTDOWN_GRACE_S)
            if cri_proxy is not None:
                await cri_proxy.aclose()
        finally:
            config.address.unlink(missing_ok=True)
    finally:
        snapshotter.close()
        close = getattr(remote, "aclose", None)  # the lazy layers unmount their FUSE mount
        if close is not None:
            await close()


async def _announce_ready(remote: RemoteLayers | None) -> None:
    """Tell systemd (``Type=notify``) the daemon is ready once the lazy worker has loaded what
    a Prepare needs. The socket is up before: containerd may connect, and a Prepare that
    comes early waits for the worker. Ready means a pull no longer shares the interpreter with
    the worker's imports (130-310 ms of them, measured), so containerd, ordered after us,
    starts when a pull runs at full speed."""
    warm_up = getattr(remote, "warm_up", None)
    ready = getattr(remote, "ready", None)
    if warm_up is not None and ready is not None:
        warm_up()
        try:
            await ready()
        except Exception as err:  # still serving: layers fall back to downloads
            log.warning("lazy layers unavailable, layers will be downloaded: %s", err)
    trace.event("startup_ready")
    if sdnotify.notify("READY=1"):
        log.info("told systemd the snapshotter is ready")


def _add_cri_proxy(server: grpc.aio.Server, cri: CriKeychainSettings | None
                   ) -> CriImageProxy | None:
    if cri is None:
        return None
    from stargz.cri.proxy import CriImageProxy

    proxy = CriImageProxy(cri)
    server.add_generic_rpc_handlers((proxy,))
    log.info("CRI keychain: serving the CRI ImageService, forwarded to %s",
             cri.image_service_path)
    return proxy


def _claim_socket(address: Path) -> None:
    """Make way for our socket: remove a stale one, refuse one a live daemon answers on."""
    _make_private_dirs(address.parent)
    if address.is_socket():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(address))
            except OSError:
                address.unlink()  # left by a daemon that did not stop cleanly
                return
        raise ConfigError(f"socket {address} is in use by another process")
    if address.exists():
        raise ConfigError(f"socket path {address} exists and is not a socket")


def _make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, 0700 whatever the umask (as the reference makes
    its socket's); existing ones are the admin's and left as they are."""
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another daemon starting beside us
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)  # the umask may have cut the owner's bits


def _listen(server: grpc.aio.Server, address: Path) -> None:
    """Listen on ``address``, a socket only root can connect to: whoever reaches it runs
    mounts as root. gRPC binds with the umask's mode (0777 at umask 000), so the socket is
    bound in a fresh 0700 directory, made 0600 there, then renamed into place."""
    private = Path(tempfile.mkdtemp(prefix=".bind-", dir=address.parent))
    staged = private / "s"
    try:
        server.add_insecure_port(f"unix://{staged}")
        os.chmod(staged, 0o600)
        os.replace(staged, address)
    except (RuntimeError, OSError) as err:
        raise RuntimeIntegrationError(f"can not listen on {address}: {err}") from None
    finally:
        staged.unlink(missing_ok=True)
        private.rmdir()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(config: SnapshotterConfig, remote: RemoteLayers | None = None,
        cri: CriKeychainSettings | None = None) -> None:
    """Run the daemon in this process until a signal stops it."""
    if os.geteuid() != 0:
        log.warning("not running as root: overlay and bind mounts will fail in containerd")
    asyncio.run(serve(config, remote, cri))


DESCRIPTION = "containerd remote snapshotter for eStargz (a proxy plugin on a unix socket)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags; shared by ``python -m stargz.snapshotter.daemon`` and the CLI."""
    parser.add_argument("--config", type=Path,
                        help="config.toml (the reference's keys and ours: docs/CONFIG.md)")
    parser.add_argument("--address", type=Path, help=f"unix socket (default {DEFAULT_ADDRESS})")
    parser.add_argument("--root", type=Path, help=f"state directory (default {DEFAULT_ROOT})")
    parser.add_argument("--log-level", help=f"{logs.LEVEL_NAMES} (default info)")
    parser.add_argument("--trace", action="store_true",
                        help="log where the time goes (stargz.trace lines), whatever the level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stargz snapshotter", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace,
                     file: FileConfig | None = None) -> SnapshotterConfig:
    """The config file (``file``: already loaded), with command-line flags taking precedence."""
    if file is None:
        file = load_file_config(args.config)
    config = snapshotter_config(file, str(args.config))
    if args.address is not None:
        config = replace(config, address=args.address.absolute())
    if args.root is not None:
        config = replace(config, root=args.root.absolute())
    if args.log_level is not None:
        config = replace(config, log_level=_log_level(args.log_level))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


MAX_SOCKET_PATH = 107  # bytes of sun_path, less its terminating NUL


def check_paths(config: SnapshotterConfig) -> None:
    """--root and --address that can not work, said before anything starts (ConfigError)."""
    # _listen binds in <parent>/.bind-XXXXXXXX/s first, then renames into place
    staged = len(os.fsencode(config.address.parent)) + len("/.bind-xxxxxxxx/s")
    length = max(len(os.fsencode(config.address)), staged)
    if length > MAX_SOCKET_PATH:
        raise ConfigError(f"--address {config.address}: a unix socket path holds at most "
                          f"{MAX_SOCKET_PATH} bytes, this one needs {length}")
    for flag, path, directory in (("--root", config.root, config.root),
                                  ("--address", config.address, config.address.parent)):
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"{flag} {path}: {existing} is not a directory")


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename is not None else ""
        return f"{err.strerror}{where}"
    return " ".join(str(err).split()) or type(err).__name__


def _cri_settings(file: FileConfig, where: str) -> CriKeychainSettings | None:
    """The CRI keychain's settings; its module (the registry client, the CRI API) is loaded
    only when it is enabled, so the socket comes sooner (the lazy worker loads the registry
    client on its own thread)."""
    if not file.cri_keychain.enable_keychain:
        return None
    from stargz.cri.proxy import settings_from_config

    return settings_from_config(file, where)


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 2 for a bad config, 1 otherwise."""
    try:
        logs.configure(args.log_level or "info")  # the config's warnings in the one format
        file = load_file_config(args.config)
        config = config_from_args(args, file)
        logs.configure(config.log_level)  # httpx's line per request only at debug and trace
        if getattr(args, "trace", False):
            trace.enable()
        check_paths(config)
        with trace.span("startup_import_lazy"):
            from stargz.snapshotter.lazy import lazy_from_config  # late: it loads pyfuse3

        # serve() starts the lazy worker (pyfuse3, httpx) once the socket is up: its imports
        # then overlap containerd's start, not ours (they would share the GIL)
        remote = lazy_from_config(file, config.root, str(args.config or "defaults"))
        run(config, remote, _cri_settings(file, str(args.config)))
    except (StargzError, OSError) as err:  # one shape for every start-up failure
        print(f"stargz: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
