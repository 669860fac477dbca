"""The gRPC front end: containerd.services.snapshots.v1.Snapshots over a :class:`Snapshotter`.

This is the one place where the exception tree becomes gRPC status codes; containerd's errdefs
turn those back into ErrNotFound, ErrAlreadyExists and so on, which its pull and run logic
(notably the remote-snapshot handshake) depend on.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from stargz.errors import (
    StargzError,
)
from stargz.grpc_status import status_for
from stargz.snapshotter.api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from stargz.snapshotter.layout import Mount
from stargz.snapshotter.metastore import Info, Kind
from stargz.snapshotter.snapshotter import Snapshotter
from stargz.trace import span

log = logging.getLogger(__name__)

LIST_BATCH = 100  # infos per streamed List message, as containerd's own service sends them

_KIND_TO_PROTO = {
    Kind.VIEW: snapshots_pb2.VIEW,
    Kind.ACTIVE: snapshots_pb2.ACTIVE,
    Kind.COMMITTED: snapshots_pb2.COMMITTED,
}


R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _grpc_errors(handler: Handler[R]) -> Handler[R]:
    """Answer a failed call with the status code its error means and a one-line message."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            with span("grpc", call=handler.__name__, key=getattr(request, "key", None)):
                return await handler(self, request, context)
        except (StargzError, OSError, sqlite3.Error) as err:
            code = status_for(err)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("%s failed: %s", handler.__name__, err)
            else:
                log.debug("%s: %s: %s", handler.__name__, code.name, err)
            await context.abort(code, str(err))
            raise AssertionError("unreachable: abort raises") from err

    return wrapper


def mounts_to_proto(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


def info_to_proto(info: Info) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=info.name,
        parent=info.parent,
        kind=_KIND_TO_PROTO[info.kind],
        created_at=_timestamp(info.created_ns),
        updated_at=_timestamp(info.updated_ns),
        labels=info.labels,
    )


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """Requests carry a ``snapshotter`` name; like the reference, one daemon is one snapshotter
    and the name is not checked."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    @_grpc_errors
    async def Prepare(
        self, request: snapshots_pb2.PrepareSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.PrepareSnapshotResponse:
        labels = dict(request.labels)
        mounts = await self.snapshotter.prepare(request.key, request.parent, labels)
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_grpc_errors
    async def View(
        self, request: snapshots_pb2.ViewSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.ViewSnapshotResponse:
        labels = dict(request.labels)
        mounts = await self.snapshotter.view(request.key, request.parent, labels)
        return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_grpc_errors
    async def Mounts(
        self, request: snapshots_pb2.MountsRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.MountsResponse:
        mounts = await self.snapshotter.mounts(request.key)
        return snapshots_pb2.MountsResponse(mounts=mounts_to_proto(mounts))

    @_grpc_errors
    async def Commit(
        self, request: snapshots_pb2.CommitSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.snapshotter.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_grpc_errors
    async def Remove(
        self, request: snapshots_pb2.RemoveSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.snapshotter.remove(request.key)
        return empty_pb2.Empty()

    @_grpc_errors
    async def Stat(
        self, request: snapshots_pb2.StatSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.StatSnapshotResponse:
        info = await self.snapshotter.stat(request.key)
        return snapshots_pb2.StatSnapshotResponse(info=info_to_proto(info))

    @_grpc_errors
    async def Update(
        self, request: snapshots_pb2.UpdateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.UpdateSnapshotResponse:
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        info = await self.snapshotter.update(request.info.name, dict(request.info.labels), paths)
        return snapshots_pb2.UpdateSnapshotResponse(info=info_to_proto(info))

    @_grpc_errors
    async def Usage(
        self, request: snapshots_pb2.UsageRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.UsageResponse:
        usage = await self.snapshotter.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_grpc_errors
    async def Cleanup(
        self, request: snapshots_pb2.CleanupRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.snapshotter.cleanup()
        return empty_pb2.Empty()

    async def List(
        self, request: snapshots_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[snapshots_pb2.ListSnapshotsResponse]:
        # a streaming handler: errors have to be turned into a status here, not by the wrapper
        try:
            infos = await self.snapshotter.walk(list(request.filters))
        except StargzError as err:
            await context.abort(status_for(err), str(err))
            raise AssertionError("unreachable: abort raises") from err
        for start in range(0, len(infos), LIST_BATCH):
            batch = infos[start : start + LIST_BATCH]
            yield snapshots_pb2.ListSnapshotsResponse(info=[info_to_proto(i) for i in batch])
