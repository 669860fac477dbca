"""The gRPC service in-process, over a real unix socket, with the generated client stub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from stargz.snapshotter.api import snapshots_pb2 as pb
from stargz.snapshotter.api import snapshots_pb2_grpc
from stargz.snapshotter.remote import LABEL_SNAPSHOT_REF, LABEL_STARGZ_DIGEST
from stargz.snapshotter.service import LIST_BATCH, SnapshotsService
from stargz.snapshotter.snapshotter import Snapshotter
from tests.unit.test_snapshotter_remote import DirectoryLayers, stargz_labels

Client = snapshots_pb2_grpc.SnapshotsStub


@asynccontextmanager
async def serving(tmp_path: Path, remote: Any = None) -> AsyncIterator[Client]:
    snapshotter = Snapshotter(tmp_path / "root", remote)
    server = grpc.aio.server()
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsService(snapshotter), server)
    address = f"unix://{tmp_path / 'snap.sock'}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield snapshots_pb2_grpc.SnapshotsStub(channel)
    finally:
        await server.stop(None)
        snapshotter.close()


def scenario(tmp_path: Path, body: Callable[[Client], Awaitable[None]], remote: Any = None) -> None:
    async def main() -> None:
        async with serving(tmp_path, remote) as client:
            await body(client)

    asyncio.run(main())


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_lifecycle_over_grpc(tmp_path: Path) -> None:
    async def body(client: Client) -> None:
        started = time.time_ns()
        prepared = await client.Prepare(pb.PrepareSnapshotRequest(key="k", labels={"a": "1"}))
        assert [(m.type, list(m.options)) for m in prepared.mounts] == [("bind", ["rw", "rbind"])]
        upper = Path(prepared.mounts[0].source)
        (upper / "file").write_bytes(b"x" * 5000)
        usage = await client.Usage(pb.UsageRequest(key="k"))
        assert usage.inodes == 2 and usage.size >= 5000

        await client.Commit(pb.CommitSnapshotRequest(key="k", name="base", labels={"b": "2"}))
        stat = await client.Stat(pb.StatSnapshotRequest(key="base"))
        assert (stat.info.name, stat.info.kind, dict(stat.info.labels)) == (
            "base",
            pb.COMMITTED,
            {"b": "2"},
        )
        assert stat.info.created_at.ToNanoseconds() >= started

        view = await client.View(pb.ViewSnapshotRequest(key="v", parent="base"))
        assert [(m.type, m.source) for m in view.mounts] == [("bind", str(upper))]
        again = await client.Mounts(pb.MountsRequest(key="v"))
        assert again == pb.MountsResponse(mounts=view.mounts)

        mask = field_mask_pb2.FieldMask(paths=["labels.c"])
        info = pb.Info(name="base", labels={"c": "3"})
        updated = await client.Update(pb.UpdateSnapshotRequest(info=info, update_mask=mask))
        assert dict(updated.info.labels) == {"b": "2", "c": "3"}

        await client.Remove(pb.RemoveSnapshotRequest(key="v"))
        await client.Remove(pb.RemoveSnapshotRequest(key="base"))
        await client.Cleanup(pb.CleanupRequest())
        assert not upper.exists()

    scenario(tmp_path, body)


def test_error_codes_are_what_containerd_expects(tmp_path: Path) -> None:
    async def body(client: Client) -> None:
        await client.Prepare(pb.PrepareSnapshotRequest(key="a"))
        await client.Commit(pb.CommitSnapshotRequest(key="a", name="base"))
        await client.Prepare(pb.PrepareSnapshotRequest(key="child", parent="base"))
        cases = {
            grpc.StatusCode.NOT_FOUND: [
                client.Stat(pb.StatSnapshotRequest(key="nope")),
                client.Prepare(pb.PrepareSnapshotRequest(key="x", parent="nope")),
                client.Remove(pb.RemoveSnapshotRequest(key="nope")),
                client.Usage(pb.UsageRequest(key="nope")),
                client.Commit(pb.CommitSnapshotRequest(key="nope", name="n")),
            ],
            grpc.StatusCode.ALREADY_EXISTS: [
                client.Prepare(pb.PrepareSnapshotRequest(key="child")),
                client.View(pb.ViewSnapshotRequest(key="base")),
            ],
            grpc.StatusCode.FAILED_PRECONDITION: [
                client.Remove(pb.RemoveSnapshotRequest(key="base")),
                client.Mounts(pb.MountsRequest(key="base")),
            ],
            grpc.StatusCode.INVALID_ARGUMENT: [
                client.Prepare(pb.PrepareSnapshotRequest(key="y", parent="child")),
                client.Update(
                    pb.UpdateSnapshotRequest(
                        info=pb.Info(name="base"),
                        update_mask=field_mask_pb2.FieldMask(paths=["kind"]),
                    )
                ),
                client.Prepare(pb.PrepareSnapshotRequest(key="z", labels={"k": "v" * 5000})),
                client.Prepare(pb.PrepareSnapshotRequest(key="")),
                client.Commit(pb.CommitSnapshotRequest(key="child", name="")),
            ],
        }
        for expected, calls in cases.items():
            assert [await code_of(call) for call in calls] == [expected] * len(calls)

        listing = client.List(pb.ListSnapshotsRequest(filters=["kind=="]))
        assert await code_of(_drain(listing)) == grpc.StatusCode.INVALID_ARGUMENT

    scenario(tmp_path, body)


async def _drain(stream: Any) -> list[Any]:
    return [message async for message in stream]


def test_list_streams_in_batches_and_filters(tmp_path: Path) -> None:
    count = LIST_BATCH + 5

    async def body(client: Client) -> None:
        for i in range(count):
            await client.View(pb.ViewSnapshotRequest(key=f"v{i:03}", labels={"n": str(i % 2)}))
        messages = await _drain(client.List(pb.ListSnapshotsRequest()))
        assert [len(m.info) for m in messages] == [LIST_BATCH, 5]
        names = [i.name for m in messages for i in m.info]
        assert names == sorted(f"v{i:03}" for i in range(count))
        odd = await _drain(client.List(pb.ListSnapshotsRequest(filters=["labels.n==1"])))
        assert sum(len(m.info) for m in odd) == count // 2

    scenario(tmp_path, body)


def test_remote_handshake_over_grpc(tmp_path: Path) -> None:
    layers = DirectoryLayers(tmp_path / "lazy")

    async def body(client: Client) -> None:
        labels = stargz_labels("sha256:chain1")
        request = pb.PrepareSnapshotRequest(key="default/1/extract", labels=labels)
        assert await code_of(client.Prepare(request)) == grpc.StatusCode.ALREADY_EXISTS
        query = f'labels."{LABEL_SNAPSHOT_REF}"==sha256:chain1,parent==""'
        found = await _drain(client.List(pb.ListSnapshotsRequest(filters=[query])))
        assert [(i.name, i.kind) for m in found for i in m.info] == [
            ("sha256:chain1", pb.COMMITTED)
        ]
        view = await client.View(pb.ViewSnapshotRequest(key="v", parent="sha256:chain1"))
        assert view.mounts[0].source == str(layers.layer_dir(labels[LABEL_STARGZ_DIGEST]))

    scenario(tmp_path, body, layers)


def test_status_codes_for_the_exception_tree() -> None:
    from stargz import errors
    from stargz.grpc_status import status_for

    assert status_for(errors.NotFoundError("x")) is grpc.StatusCode.NOT_FOUND
    assert status_for(errors.AlreadyExistsError("x")) is grpc.StatusCode.ALREADY_EXISTS
    assert status_for(errors.FailedPreconditionError("x")) is grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(errors.InvalidArgumentError("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(errors.RuntimeIntegrationError("x")) is grpc.StatusCode.UNAVAILABLE
    assert status_for(errors.TOCError("x")) is grpc.StatusCode.UNKNOWN
    assert status_for(OSError(28, "No space left on device")) is grpc.StatusCode.INTERNAL
