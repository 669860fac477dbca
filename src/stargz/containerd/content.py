"""containerd's content store: look blobs up, write them (bytes or a stream), relabel them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, Mapping
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from stargz.containerd.api import content_pb2, content_pb2_grpc
from stargz.containerd.client import CALL_TIMEOUT_S, Containerd, map_rpc_error
from stargz.errors import NotFoundError, RuntimeIntegrationError, VerificationError

WRITE_PIECE = 1 << 20  # bytes per Write message, well under gRPC's message limit


class ContentStore:
    def __init__(self, ctd: Containerd) -> None:
        self.ctd = ctd
        self._stub: Any = content_pb2_grpc.ContentStub(ctd.channel)  # type: ignore[no-untyped-call]

    async def info(self, digest: str) -> content_pb2.Info | None:
        """The blob's record, or None when the store does not hold it."""
        try:
            response = await self.ctd.call(
                f"content info {digest}", self._stub.Info, content_pb2.InfoRequest(digest=digest)
            )
        except NotFoundError:
            return None
        info: content_pb2.Info = response.info
        return info

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set (only) these labels on an existing blob, keeping its others."""
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=dict(labels)), update_mask=mask
        )
        await self.ctd.call(f"label content {digest}", self._stub.Update, request)

    async def write_bytes(self, digest: str, data: bytes, labels: Mapping[str, str]) -> None:
        async def pieces() -> AsyncIterable[bytes]:
            yield data

        await self.write(digest, len(data), pieces(), labels)

    async def write(
        self, digest: str, size: int, body: AsyncIterable[bytes], labels: Mapping[str, str]
    ) -> None:
        """Store a blob under ``digest`` (containerd checks size and digest on commit).

        A blob already there only gets its labels updated: the body is not read."""
        if await self.info(digest) is not None:
            if labels:
                await self.update_labels(digest, labels)
            return
        ref = f"stargz-{digest}-{secrets.token_hex(4)}"
        call = self._stub.Write(metadata=self.ctd.metadata(), timeout=CALL_TIMEOUT_S)
        try:
            offset = await self._send_body(call, ref, body)
            if offset != size:
                raise VerificationError(f"blob {digest} has {offset} bytes, expected {size}")
            await _exchange(call, content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT, ref=ref, total=size, expected=digest,
                offset=offset, labels=dict(labels)))
            await call.done_writing()
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:  # someone else committed it
                return
            raise map_rpc_error(err, f"write {digest}") from None
        finally:
            call.cancel()

    async def _send_body(self, call: Any, ref: str, body: AsyncIterable[bytes]) -> int:
        await _exchange(call, content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref))
        offset = 0
        async for data in body:
            for start in range(0, len(data), WRITE_PIECE):
                piece = data[start:start + WRITE_PIECE]
                await _exchange(call, content_pb2.WriteContentRequest(
                    action=content_pb2.WRITE, ref=ref, offset=offset, data=piece))
                offset += len(piece)
        return offset


async def _exchange(call: Any, request: content_pb2.WriteContentRequest) -> None:
    """containerd answers every Write message before it takes the next one."""
    await call.write(request)
    response = await call.read()
    if response is grpc.aio.EOF:
        raise RuntimeIntegrationError("containerd closed the content write stream early")
