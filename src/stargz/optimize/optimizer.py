"""What `stargz optimize` does: record a workload's file accesses per layer, then convert.

1. The image is mounted as `stargz mount --rw` mounts it (``imagemount``, in this process):
   eStargz layers lazily, other layers downloaded; overlayfs on top; each layer's TOC says which
   files it has (for mapping a path to the top-most layer providing it).
2. The workload runs with runc over that mount (``sandbox``) while fanotify records every file
   opened on it (``fanotify``), in first-access order.
3. Paths go to their layers (``layerfiles``); ``--record-in`` takes a record instead of a run
   (its layer indexes as written when it names this manifest), ``--prioritize-file`` adds paths
   and globs after them. The record is written in the reference's format (``--record-out``).
4. The converter builds every layer with its own files first and ``.prefetch.landmark`` after
   them (a layer nothing was read from gets ``.no.prefetch.landmark``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio

from stargz.config import Config
from stargz.convert.converter import Converter, ConvertOptions, ConvertResult
from stargz.convert.progress import ConvertProgress
from stargz.convert.store import ImageStore
from stargz.convert.workload import RecordEntry, read_record_entries, write_records
from stargz.errors import RuntimeIntegrationError, StargzError
from stargz.imagemount.daemon import MountRequest, serve_image
from stargz.imagemount.layers import OpenLayer
from stargz.imagemount.state import MountState
from stargz.optimize.layerfiles import ImageFiles
from stargz.optimize.sandbox import RunOptions, RunResult, Workload
from stargz.registry.client import RegistryClient
from stargz.registry.manifest import Manifest, Platform
from stargz.registry.reference import Reference

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkloadOverrides:
    entrypoint: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    cwd: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class OptimizeRequest:
    source: Reference
    convert: ConvertOptions = field(default_factory=ConvertOptions)
    overrides: WorkloadOverrides = field(default_factory=WorkloadOverrides)
    run: RunOptions = field(default_factory=RunOptions)
    record_in: Path | None = None
    record_out: Path | None = None
    prioritize: tuple[str, ...] = ()  # paths and globs, after the recorded files
    fail_on_workload_error: bool = False
    mount_config: Config = field(default_factory=lambda: Config(no_background_fetch=True))
    workdir: Path | None = None


@dataclass
class Recording:
    manifest: Manifest
    entries: list[RecordEntry]  # access order, each with the index of its layer
    run: RunResult | None = None

    def per_layer(self) -> dict[str, tuple[str, ...]]:
        """Each source layer's files to put first (by layer digest), in access order."""
        layers = self.manifest.layers()
        lists: dict[str, dict[str, None]] = {}  # dicts keep order and drop repeats
        for entry in self.entries:
            if entry.layer_index is not None:
                digest = layers[entry.layer_index].digest
                lists.setdefault(digest, {})[entry.path] = None
        return {digest: tuple(paths) for digest, paths in lists.items()}


async def record(request: OptimizeRequest, registry: RegistryClient) -> Recording:
    """The access record of ``request``: run (or ``--record-in``), mapped to layers."""
    manifest = await registry.get_manifest(request.source, Platform.host())
    given = read_record_entries(request.record_in) if request.record_in else None
    placed = _placed(given or [], manifest)
    if given is not None and len(placed) == len(given) and not request.prioritize:
        return Recording(manifest, placed)  # the record says where everything is
    config = json.loads(await registry.get_blob(request.source.repo_only(),
                                                manifest.config().digest))

    async def inside(rootfs: Path, files: ImageFiles, stop: anyio.Event) -> Recording:
        run: RunResult | None = None
        paths: list[str] = [entry.path for entry in given or []]
        if given is None:
            workload = Workload.of(config, **vars(request.overrides))
            run, paths = await _run_recorded(rootfs, workload, request, stop)
        entries = _entries(files, manifest.digest, paths + files.expand(request.prioritize),
                           placed)
        return Recording(manifest, entries, run)

    return await with_mounted_image(request, registry, inside)


def _placed(entries: Sequence[RecordEntry], manifest: Manifest) -> list[RecordEntry]:
    """The entries whose layer the record names for this very manifest."""
    count = len(manifest.layers())
    return [entry for entry in entries
            if entry.manifest_digest == manifest.digest and entry.layer_index is not None
            and 0 <= entry.layer_index < count]


def _entries(files: ImageFiles, manifest_digest: str, paths: Sequence[str],
             placed: Sequence[RecordEntry]) -> list[RecordEntry]:
    """Record entries in order: where the record placed a path, else the layer providing it."""
    where = {entry.path.lstrip("/"): entry.layer_index for entry in placed}
    entries: list[RecordEntry] = []
    seen: set[str] = set()
    for path in paths:
        name = path.lstrip("/")
        index = where.get(name) if name in where else files.layer_of(name)
        if index is None or name in seen:
            continue
        seen.add(name)
        entries.append(RecordEntry(name, manifest_digest, index))
    return entries


async def _run_recorded(rootfs: Path, workload: Workload, request: OptimizeRequest,
                        stop: anyio.Event) -> tuple[RunResult, list[str]]:
    from stargz.optimize.fanotify import AccessRecorder
    from stargz.optimize.sandbox import base_spec, resolve_user, run_workload, runtime_spec

    workdir = rootfs.parent / "workload"  # removed with the mount's scratch directory
    ids = await anyio.to_thread.run_sync(resolve_user, rootfs, workload.user)
    base = await anyio.to_thread.run_sync(base_spec, workdir / "spec")
    spec = runtime_spec(base, rootfs, workload, ids, request.run.net_host)
    recorder = AccessRecorder(rootfs)
    await anyio.to_thread.run_sync(recorder.start)
    print(f"stargz: running {json.dumps(list(workload.args))} (at most "
          f"{request.run.period:g} s)", file=sys.stderr, flush=True)
    try:
        result = await run_workload(spec, workdir / "run", request.run, stop)
    finally:  # closing the events' files talks to our own FUSE loop: never on it
        paths = await anyio.to_thread.run_sync(recorder.stop)
    if result.ending == "interrupted":  # SIGINT/SIGTERM: the mount is coming down
        raise RuntimeIntegrationError("interrupted while the workload ran: nothing converted")
    _report(result, len(paths))
    if result.failed and request.fail_on_workload_error:
        raise RuntimeIntegrationError(f"the workload exited with status {result.exit_code} "
                            "(--fail-on-workload-error)")
    return result, paths


def _report(result: RunResult, files: int) -> None:
    why = {"exited": f"exited with status {result.exit_code}",
           "period": "was stopped: --period passed",
           "line": "was stopped: --wait-on-line seen",
           "interrupted": "was interrupted"}[result.ending]
    lead = "stargz: warning: the workload" if result.failed else "stargz: the workload"
    tail = "; converting with what it read" if result.failed else ""
    print(f"{lead} {why}; it opened {files} files of the image{tail}", file=sys.stderr,
          flush=True)


def _scratch(request: OptimizeRequest) -> Path:
    base = request.workdir or Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="stargz-optimize-", dir=base))


async def with_mounted_image(request: OptimizeRequest, registry: RegistryClient,
                             body: Callable[[Path, ImageFiles, anyio.Event], Awaitable[T]]) -> T:
    """``body(rootfs, files, stop)`` with the image mounted writable on a scratch directory,
    served from this process (SIGINT/SIGTERM set ``stop``); unmounted and removed after."""
    scratch = _scratch(request)
    rootfs = scratch / "rootfs"
    rootfs.mkdir()
    mount = MountRequest(image=request.source, state=MountState.of(rootfs, scratch / "state"),
                         writable=True, config=request.mount_config, platform=Platform.host())
    stop, ready = anyio.Event(), anyio.Event()
    opened: list[OpenLayer] = []
    umask = os.umask(0o022)
    results: list[T] = []
    failed: list[Exception] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_serve, mount, registry, opened, ready, stop)
            await ready.wait()
            try:
                files = await anyio.to_thread.run_sync(_image_files, opened)
                results.append(await body(rootfs, files, stop))
            except Exception as err:  # raised once the mount came down in order, not cancelled
                failed.append(err)
            finally:
                stop.set()
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    finally:
        os.umask(umask)  # the mount sets its own (0077) for what it keeps
        await anyio.to_thread.run_sync(_remove_tree, scratch)
    if failed:
        raise failed[0]
    return results[0]


async def _serve(mount: MountRequest, registry: RegistryClient, opened: list[OpenLayer],
                 ready: anyio.Event, stop: anyio.Event) -> None:
    def on_ready(layers: list[OpenLayer]) -> None:
        opened.extend(layers)
        ready.set()

    await serve_image(mount, registry, on_ready, stop)
    if not ready.is_set():
        raise RuntimeIntegrationError("interrupted while the image was being mounted")


def _image_files(layers: list[OpenLayer]) -> ImageFiles:
    return ImageFiles.from_entries(
        [(entry.name, entry.type) for entry in layer.view.blob.walk()] for layer in layers)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one error to report from a task group's (the first that is not a cancellation)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if isinstance(error, StargzError | OSError | KeyboardInterrupt):
            return error
    return group.exceptions[0]


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


async def convert(recording: Recording, request: OptimizeRequest, source: ImageStore,
                  dest: ImageStore, source_object: str, dest_tag: str,
                  progress: ConvertProgress) -> ConvertResult:
    """The source image converted with each layer's recorded files first."""
    host = Platform.host()
    options = replace(
        request.convert,
        layer_prioritized=recording.per_layer(),
        allow_missing_prioritized=True,  # a --record-in from elsewhere may name stale files
        platforms=request.convert.platforms or (f"{host.os}/{host.architecture}",),
    )
    converter = Converter(source, dest, options, progress=progress)
    return await converter.convert(source_object, dest_tag)


def write_record(recording: Recording, path: Path) -> None:
    write_records(path, recording.entries)
