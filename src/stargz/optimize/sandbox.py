"""Run an image's workload with runc over a mounted root filesystem, as a container would start.

The runtime spec is ``runc spec``'s (what the installed runc expects) with the image's process
(entrypoint + command, environment, working directory, user) and containerd's default
capabilities; its own network namespace (loopback only) unless ``net_host``. The workload's
stdout is copied to ours line by line (to watch for ``wait_on_line``), its stderr is ours.
It runs until it exits, ``period`` passes, the line shows, or ``interrupted`` is set.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
from anyio.abc import ByteReceiveStream, Process

from stargz.errors import InvalidArgumentError, RuntimeIntegrationError

log = logging.getLogger(__name__)

RUNC = "runc"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# containerd's default set (oci.WithDefaultSpec), which the reference's optimize runs with
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
KILL_WAIT_S = 10.0
Ending = Literal["exited", "period", "line", "interrupted"]


@dataclass(frozen=True)
class Workload:
    """The process to run: what the image's config says, or what was given instead."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""  # as in the image config: uid, name, uid:gid, name:group; "" = root

    @classmethod
    def of(cls, image_config: Mapping[str, Any], *, entrypoint: Sequence[str] | None = None,
           args: Sequence[str] | None = None, env: Sequence[str] = (), cwd: str | None = None,
           user: str | None = None) -> Workload:
        """The image's workload with the overrides given (as ctr-remote: ``entrypoint``
        replaces the entrypoint and ``args`` the command, each on its own)."""
        config = image_config.get("config") or {}
        argv = list(entrypoint if entrypoint else config.get("Entrypoint") or [])
        argv += list(args if args else config.get("Cmd") or [])
        if not argv:
            raise InvalidArgumentError("the image has no entrypoint or command: give "
                                       "--entrypoint or --args")
        return cls(
            args=tuple(argv),
            env=tuple(merge_env(config.get("Env") or [], env)),
            cwd=cwd or config.get("WorkingDir") or "/",
            user=user if user is not None else config.get("User") or "",
        )


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``base`` with each ``K=V`` of ``overrides`` replacing ``K``; PATH defaulted."""
    merged: dict[str, str] = {}
    for item in [*base, *overrides]:
        key, sep, _ = item.partition("=")
        if not key or not sep:
            raise InvalidArgumentError(f"environment entry {item!r} is not KEY=VALUE")
        merged[key] = item
    merged.setdefault("PATH", DEFAULT_PATH)
    return list(merged.values())


@dataclass(frozen=True)
class RunOptions:
    period: float = 10.0  # the reference's default
    wait_on_line: str = ""
    net_host: bool = False


@dataclass
class RunResult:
    ending: Ending
    exit_code: int | None  # the workload's own status when it exited by itself
    lines: int = 0

    @property
    def failed(self) -> bool:
        return self.ending == "exited" and self.exit_code != 0


@dataclass
class _Watch:
    wait_on_line: str
    out: BinaryIO
    seen: anyio.Event = field(default_factory=anyio.Event)
    lines: int = 0


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, list[int]]:
    """(uid, gid, additional gids) for an image config's User, from the image's /etc/passwd
    and /etc/group (numbers need no entry; a uid alone takes its passwd gid, else 0)."""
    name, _, group = user.partition(":")
    passwd = _table(rootfs / "etc/passwd")
    groups = _table(rootfs / "etc/group")
    entry = next((row for row in passwd if name in (row[0], row[2])), None) if name else None
    if name.isdigit():
        uid = int(name)
    elif not name:
        uid = 0
    elif entry is not None:
        uid = int(entry[2])
    else:
        raise InvalidArgumentError(f"user {name!r} is not in the image's /etc/passwd")
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if group:
        gid = _group_id(groups, group)
    login = entry[0] if entry is not None else ""
    extra = [int(row[2]) for row in groups
             if login and login in row[3].split(",") and row[2].isdigit() and int(row[2]) != gid]
    return uid, gid, extra


def _group_id(groups: list[list[str]], group: str) -> int:
    if group.isdigit():
        return int(group)
    row = next((row for row in groups if row[0] == group), None)
    if row is None or not row[2].isdigit():
        raise InvalidArgumentError(f"group {group!r} is not in the image's /etc/group")
    return int(row[2])


def _table(path: Path) -> list[list[str]]:
    """Rows of a passwd/group file, padded to 4 fields; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]
    return [[*row, "", "", "", ""][:max(4, len(row))] for row in rows]


def runtime_spec(base: dict[str, Any], rootfs: Path, workload: Workload,
                 ids: tuple[int, int, list[int]], net_host: bool) -> dict[str, Any]:
    """``base`` (``runc spec``'s) made to run ``workload`` on ``rootfs``."""
    spec: dict[str, Any] = json.loads(json.dumps(base))  # a deep copy
    uid, gid, extra = ids
    process = spec["process"]
    process.update(terminal=False, args=list(workload.args), env=list(workload.env),
                   cwd=workload.cwd)
    process["user"] = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
    process["capabilities"] = {kind: list(DEFAULT_CAPABILITIES)
                               for kind in ("bounding", "effective", "permitted")}
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["hostname"] = "stargz-optimize"
    linux = spec.setdefault("linux", {})
    if net_host:
        linux["namespaces"] = [ns for ns in linux.get("namespaces", [])
                               if ns.get("type") != "network"]
        spec["mounts"] = [*spec.get("mounts", []), *(
            {"destination": f"/etc/{name}", "type": "bind", "source": f"/etc/{name}",
             "options": ["rbind", "ro"]} for name in ("resolv.conf", "hosts"))]
    return spec


def base_spec(workdir: Path) -> dict[str, Any]:
    """What ``runc spec`` writes: the defaults of the runc that will run it."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([RUNC, "spec", "--bundle", str(workdir)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeIntegrationError(f"runc spec: {done.stderr.strip()}")
    return dict(json.loads((workdir / "config.json").read_text()))


async def run_workload(spec: dict[str, Any], workdir: Path, options: RunOptions,
                       interrupted: anyio.Event, out: BinaryIO | None = None) -> RunResult:
    """Run the container described by ``spec`` (bundle and runc state under ``workdir``)."""
    bundle, state = workdir / "bundle", workdir / "runc"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    container = f"stargz-optimize-{uuid.uuid4().hex[:12]}"
    runc = [RUNC, "--root", str(state)]
    watch = _Watch(options.wait_on_line, out or sys.stdout.buffer)
    process = await anyio.open_process([*runc, "run", "--bundle", str(bundle), container],
                                       stdin=subprocess.DEVNULL, stderr=None)
    try:
        ending = await _wait(process, watch, options.period, interrupted)
        if ending != "exited":
            await _kill(runc, container, process)
        code = process.returncode
    finally:
        await _delete(runc, container, process)
    return RunResult(ending, code if ending == "exited" else None, watch.lines)


async def _wait(process: Process, watch: _Watch, period: float,
                interrupted: anyio.Event) -> Ending:
    ending: Ending = "period"
    async with anyio.create_task_group() as group:

        async def until_exit() -> None:
            nonlocal ending
            assert process.stdout is not None
            await _copy_lines(process.stdout, watch)
            await process.wait()
            ending = "exited"
            group.cancel_scope.cancel()

        async def until(event: anyio.Event, why: Ending) -> None:
            nonlocal ending
            await event.wait()
            ending = why
            group.cancel_scope.cancel()

        group.start_soon(until_exit)
        group.start_soon(until, interrupted, "interrupted")
        if watch.wait_on_line:
            group.start_soon(until, watch.seen, "line")
        await anyio.sleep(period)
        group.cancel_scope.cancel()
    return ending


async def _copy_lines(stream: ByteReceiveStream, watch: _Watch) -> None:
    """The workload's stdout to ours, watching its lines for ``wait_on_line``."""
    pending = b""
    wanted = watch.wait_on_line.encode()
    async for piece in stream:
        watch.out.write(piece)
        watch.out.flush()
        pending += piece
        *lines, pending = pending.split(b"\n")
        watch.lines += len(lines)
        if wanted and any(wanted in line for line in lines):
            watch.seen.set()
    if pending and wanted and wanted in pending:
        watch.seen.set()


async def _kill(runc: list[str], container: str, process: Process) -> None:
    await anyio.run_process([*runc, "kill", "--all", container, "KILL"], check=False)
    with anyio.move_on_after(KILL_WAIT_S):
        await process.wait()
    if process.returncode is None:
        log.warning("runc did not exit %.0f s after the container was killed", KILL_WAIT_S)
        process.kill()
        await process.wait()


async def _delete(runc: list[str], container: str, process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            await _kill(runc, container, process)
        done = await anyio.run_process([*runc, "delete", "--force", container], check=False)
        if done.returncode != 0 and b"does not exist" not in done.stderr:
            log.warning("runc delete %s: %s", container, done.stderr.decode(errors="replace"))
        await process.aclose()
