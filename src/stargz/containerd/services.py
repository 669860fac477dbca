"""containerd's images, snapshots (through containerd, so its metadata records them) and diff
services: the calls an unpack needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import field_mask_pb2

from stargz.containerd.api import (
    descriptor_pb2,
    diff_pb2,
    diff_pb2_grpc,
    images_pb2,
    images_pb2_grpc,
)
from stargz.containerd.client import Containerd
from stargz.errors import NotFoundError
from stargz.snapshotter.api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc


def descriptor(media_type: str, digest: str, size: int,
               annotations: Mapping[str, str] | None = None) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size,
                                     annotations=dict(annotations or {}))


class Images:
    def __init__(self, ctd: Containerd) -> None:
        self.ctd = ctd
        self._stub: Any = images_pb2_grpc.ImagesStub(ctd.channel)  # type: ignore[no-untyped-call]

    async def get(self, name: str) -> images_pb2.Image | None:
        try:
            response = await self.ctd.call(f"get image {name}", self._stub.Get,
                                           images_pb2.GetImageRequest(name=name))
        except NotFoundError:
            return None
        image: images_pb2.Image = response.image
        return image

    async def put(self, name: str, target: descriptor_pb2.Descriptor,
                  labels: Mapping[str, str]) -> None:
        """Create the image record, or point an existing one at ``target`` with these labels."""
        image = images_pb2.Image(name=name, target=target, labels=dict(labels))
        if await self.get(name) is None:
            await self.ctd.call(f"create image {name}", self._stub.Create,
                                images_pb2.CreateImageRequest(image=image))
            return
        paths = ["target", *(f"labels.{key}" for key in labels)]
        request = images_pb2.UpdateImageRequest(
            image=image, update_mask=field_mask_pb2.FieldMask(paths=paths))
        await self.ctd.call(f"update image {name}", self._stub.Update, request)


class Snapshots:
    """One snapshotter's snapshots, as containerd's metadata layer sees them."""

    def __init__(self, ctd: Containerd, snapshotter: str) -> None:
        self.ctd = ctd
        self.snapshotter = snapshotter
        self._stub: Any = snapshots_pb2_grpc.SnapshotsStub(ctd.channel)  # type: ignore[no-untyped-call]

    async def prepare(self, key: str, parent: str,
                      labels: Mapping[str, str]) -> Sequence[mount_pb2.Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels))
        response = await self.ctd.call(f"prepare snapshot {key}", self._stub.Prepare, request)
        mounts: Sequence[mount_pb2.Mount] = response.mounts
        return mounts

    async def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key, labels=dict(labels))
        await self.ctd.call(f"commit snapshot {name}", self._stub.Commit, request)

    async def remove(self, key: str) -> None:
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        await self.ctd.call(f"remove snapshot {key}", self._stub.Remove, request)

    async def exists(self, key: str) -> bool:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            await self.ctd.call(f"stat snapshot {key}", self._stub.Stat, request)
        except NotFoundError:
            return False
        return True


class Differ:
    def __init__(self, ctd: Containerd) -> None:
        self.ctd = ctd
        self._stub: Any = diff_pb2_grpc.DiffStub(ctd.channel)  # type: ignore[no-untyped-call]

    async def apply(self, layer: descriptor_pb2.Descriptor,
                    mounts: Sequence[mount_pb2.Mount]) -> descriptor_pb2.Descriptor:
        """Unpack a layer blob (already in the content store) onto the mounts; the applied
        descriptor's digest is the layer's diff id."""
        request = diff_pb2.ApplyRequest(diff=layer, mounts=list(mounts))
        response = await self.ctd.call(f"apply layer {layer.digest}", self._stub.Apply, request)
        applied: descriptor_pb2.Descriptor = response.applied
        return applied
