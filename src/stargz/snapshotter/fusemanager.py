"""The FUSE manager: the lazy layers' FUSE mount and LayerService in a process of their own, so
that they outlive the snapshotter (stopped, killed, upgraded) - the reference's
stargz-fuse-manager.

    stargz fuse-manager --config /etc/stargz/config.toml --root /var/lib/stargz-fuse-manager

The snapshotter (``[fuse_manager] enable = true``) hands each hook call to it over the unix
socket ``[fuse_manager] address`` (0600; one JSON line each way): ``prepare`` and ``restore``
with the snapshot's name and labels, ``release`` and ``check`` (wait for its prefetch) by name.
A name is counted once per prepare, and a restore of a name the manager still serves gives its
directory again without a new use: a restarted snapshotter reattaches to what is mounted. The
names served are kept in ``<root>/held.json`` (written atomically), so a restarted manager
mounts them again (from the TOCs kept on disk: no registry needed). SIGTERM unmounts and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from stargz import sdnotify
from stargz.errors import ConfigError, NotFoundError, RuntimeIntegrationError, StargzError
from stargz.registry.credentials import Credentials
from stargz.registry.keychain import process_keychain
from stargz.registry.reference import Reference
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_REF,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_REFERENCE,
)

if TYPE_CHECKING:
    from stargz.snapshotter.lazy import LazySettings
    from stargz.snapshotter.lazyworker import LazyMounts

log = logging.getLogger(__name__)

STATE_FILE = "held.json"
DEFAULT_CALL_TIMEOUT_S = 340.0  # fetching_timeout_sec + prefetch_timeout_sec + a margin
MAX_LINE = 1 << 20  # a request's labels name every layer of the image: generous


class ManagedLazyLayers:
    """The snapshotter's RemoteLayers when a FUSE manager serves the layers: each call is one
    request on its socket. Nothing to start or stop here: the manager outlives us."""

    def __init__(self, address: Path, call_timeout: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.address = address
        self.call_timeout = call_timeout

    def warm_up(self) -> None:
        """Nothing to load: the manager is its own process."""

    async def prepare_remote(self, key: str, parent_chain: Sequence[str],
                             labels: Mapping[str, str]) -> str | None:
        name = labels.get(LABEL_SNAPSHOT_REF, key)
        return await self._directory(_with_credentials(
            {"op": "prepare", "name": name, "labels": dict(labels)}, labels))

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        return await self._directory(_with_credentials(
            {"op": "restore", "name": name, "labels": dict(labels)}, labels))

    async def release(self, name: str, directory: str) -> None:
        await self._call({"op": "release", "name": name})

    async def check(self, name: str, directory: str) -> None:
        await self._call({"op": "check", "name": name})

    async def aclose(self) -> None:
        """The layers stay mounted: stopping the manager unmounts them."""

    async def _directory(self, request: dict[str, Any]) -> str | None:
        directory = (await self._call(request)).get("directory")
        return directory if isinstance(directory, str) else None

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request and its answer; a manager that hangs fails the call after
        ``call_timeout`` instead of holding containerd's Prepare for ever."""
        try:
            with anyio.fail_after(self.call_timeout):
                return await self._exchange(request)
        except TimeoutError:
            raise RuntimeIntegrationError(
                f"the FUSE manager at {self.address} did not answer a {request.get('op')} "
                f"within {self.call_timeout:g} s") from None

    async def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.address), limit=MAX_LINE)
        except OSError as err:
            raise RuntimeIntegrationError(
                f"the FUSE manager at {self.address} is not reachable: {err.strerror}") from None
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise RuntimeIntegrationError(f"the FUSE manager at {self.address} hung up")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeIntegrationError(f"FUSE manager: {reply['error']}")
        return reply


def _with_credentials(request: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """Add the credentials this process was handed for the image's registry (the CRI keychain's,
    from kubelet's PullImage): the manager fetches the layers, so it needs them, and it keeps
    them in memory only. The socket is root's only (0600)."""
    image = labels.get(LABEL_STARGZ_REFERENCE) or labels.get(LABEL_CRI_IMAGE_REF)
    if not image:
        return request
    try:
        host = Reference.parse(image).registry
    except StargzError:
        return request
    credentials = process_keychain().get(host)
    if credentials is not None:
        request["credentials"] = {"host": host, "username": credentials.username,
                                  "secret": credentials.secret,
                                  "identity_token": credentials.identity_token}
    return request


def _take_credentials(request: dict[str, Any]) -> None:
    """Keep handed-over credentials in this process's keychain (never in held.json)."""
    handed = request.pop("credentials", None)
    if not isinstance(handed, dict):
        return
    host, username, secret = handed.get("host"), handed.get("username"), handed.get("secret")
    if isinstance(host, str) and isinstance(username, str) and isinstance(secret, str):
        process_keychain().put(host, Credentials(username, secret,
                                                 bool(handed.get("identity_token"))))


class Manager:
    """The manager's side: LazyMounts plus the snapshot names it serves, kept on disk."""

    def __init__(self, mounts: LazyMounts, root: Path) -> None:
        self.mounts = mounts
        self.state = root / STATE_FILE
        self.held: dict[str, dict[str, Any]] = {}  # name -> labels, directory, uses

    async def restore_held(self) -> None:
        """Mount again what a previous run of the manager served."""
        try:
            saved: dict[str, dict[str, Any]] = json.loads(self.state.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("%s can not be read, nothing restored: %s", self.state, err)
            return
        for name, entry in saved.items():
            try:
                directory = await self.mounts.restore(entry["labels"])
            except (StargzError, KeyError, TypeError) as err:
                log.warning("snapshot %s can not be mounted again: %s", name, err)
                continue
            if directory is not None:
                self.held[name] = {"labels": entry["labels"], "directory": directory, "uses": 1}
                log.info("restored snapshot %s at %s", name, directory)
        self._save()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        _take_credentials(request)
        op, name, labels = request.get("op"), request.get("name"), request.get("labels")
        if not isinstance(name, str):
            raise ConfigError("a FUSE manager request names no snapshot")
        if op == "release":
            await self._release(name)
            return {}
        if op == "check":
            await self._check(name)
            return {}
        if op not in ("prepare", "restore") or not isinstance(labels, dict):
            raise ConfigError(f"unknown FUSE manager request {op!r}")
        held = self.held.get(name)
        if held is not None and op == "restore":  # a restarted snapshotter reattaches
            return {"directory": held["directory"]}
        directory = await (self.mounts.prepare_remote(labels) if op == "prepare"
                           else self.mounts.restore(labels))
        if directory is not None:
            if held is None:
                held = self.held[name] = {"labels": labels, "directory": directory, "uses": 0}
            held["uses"] += 1
            self._save()
        return {"directory": directory}

    async def _check(self, name: str) -> None:
        held = self.held.get(name)
        if held is None:
            raise NotFoundError(f"the FUSE manager serves no snapshot {name}")
        await self.mounts.check(held["directory"])

    async def _release(self, name: str) -> None:
        held = self.held.get(name)
        if held is None:
            return
        held["uses"] -= 1
        if held["uses"] <= 0:
            del self.held[name]
        self._save()
        await self.mounts.release(held["directory"])

    def _save(self) -> None:
        temp = self.state.with_name(f".{STATE_FILE}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.held, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.state)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            try:
                reply = await self.handle(json.loads(line))
            except (StargzError, ValueError) as err:
                reply = {"error": " ".join(str(err).split())}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the snapshotter went away mid-call: its next start restores
        finally:
            writer.close()


async def serve(settings: LazySettings, root: Path, address: Path) -> None:
    """Serve until SIGTERM/SIGINT, then unmount."""
    from stargz.fs.mount import on_stop_signals
    from stargz.snapshotter.lazyworker import LazyMounts  # pyfuse3, the registry client

    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with LazyMounts(settings) as mounts:
        manager = Manager(mounts, root)
        await manager.restore_held()
        server = await asyncio.start_unix_server(manager.connection, sock=_listen(address),
                                                 limit=MAX_LINE)
        log.info("FUSE manager serving lazy layers at %s on %s", settings.mountpoint, address)
        await mounts.warmed.wait()  # what a first Prepare needs is loaded: systemd may go on
        sdnotify.notify("READY=1")
        stop = anyio.Event()
        try:
            with on_stop_signals(stop):
                await stop.wait()
            log.info("FUSE manager stopping: unmounting %s", settings.mountpoint)
        finally:
            server.close()
            address.unlink(missing_ok=True)


def _listen(address: Path) -> socket.socket:
    """The socket, 0600 from the start (bound under a 177 umask); a stale one is replaced."""
    address.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if address.is_socket():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(address))
            except OSError:
                address.unlink()  # left by a manager that did not stop cleanly
            else:
                raise ConfigError(f"socket {address} is in use by another process")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(address))
    finally:
        os.umask(old)
    return sock
