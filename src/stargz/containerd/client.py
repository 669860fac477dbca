"""A connection to containerd's gRPC socket: the namespace/lease headers and error mapping.

containerd scopes every call by the ``containerd-namespace`` metadata header and, when one is
given, protects what the call creates with the lease named by ``containerd-lease`` (so garbage
collection leaves half-pulled content and snapshots alone until the lease is deleted).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from stargz.containerd.api import leases_pb2, leases_pb2_grpc
from stargz.errors import (
    RuntimeIntegrationError,
    StargzError,
)
from stargz.grpc_status import error_for

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = Path("/run/containerd/containerd.sock")
DEFAULT_NAMESPACE = "default"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
LEASE_LIFETIME = datetime.timedelta(hours=1)  # a crashed pull's lease expires by itself
CALL_TIMEOUT_S = 300.0
MAX_MESSAGE = 64 << 20

T = TypeVar("T")

def map_rpc_error(err: grpc.aio.AioRpcError, what: str) -> StargzError:
    """One typed error for a failed call: the status code picks the class."""
    cls = error_for(err.code())
    detail = " ".join((err.details() or err.code().name).split())
    return cls(f"containerd {what}: {detail}")


class Containerd:
    """An open channel to containerd for one namespace (and, inside :meth:`lease`, one lease)."""

    def __init__(self, address: Path = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace
        self.lease_id: str | None = None
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.channel: Any = grpc.aio.insecure_channel(f"unix://{address}", options=options)
        self._leases: Any = leases_pb2_grpc.LeasesStub(self.channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Containerd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        headers = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease_id is not None:
            headers.append((LEASE_HEADER, self.lease_id))
        return tuple(headers)

    async def call(self, what: str, method: Callable[..., Awaitable[T]], request: Any) -> T:
        """Call a unary method with our headers; failures become one typed error."""
        try:
            return await method(request, metadata=self.metadata(), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unreachable(what, err.details() or "") from None
            raise map_rpc_error(err, what) from None

    def _unreachable(self, what: str, details: str) -> RuntimeIntegrationError:
        """Who is down: containerd itself, or a plugin it dials for us (the snapshotter),
        whose socket its answer names."""
        dialed = re.search(r"dial unix:(?://)?(/[^\s:\"]+)", details)
        if dialed is not None and dialed[1] != str(self.address):
            return RuntimeIntegrationError(
                f"{what}: containerd can not reach the snapshotter at {dialed[1]} (is `stargz "
                f"snapshotter` running on the socket containerd's proxy plugin names?): "
                f"{details}")
        return RuntimeIntegrationError(f"containerd at {self.address} is not reachable: "
                                       f"{details}")

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[str]:
        """Hold a lease (expiring on its own, in case we die) while the body runs."""
        expire = datetime.datetime.now(datetime.UTC) + LEASE_LIFETIME
        lease_id = f"stargz-rpull-{secrets.token_hex(8)}"
        request = leases_pb2.CreateRequest(
            id=lease_id, labels={LABEL_GC_EXPIRE: expire.strftime("%Y-%m-%dT%H:%M:%SZ")}
        )
        await self.call("create lease", self._leases.Create, request)
        self.lease_id = lease_id
        try:
            yield lease_id
        finally:
            self.lease_id = None
            try:
                await self.call("delete lease", self._leases.Delete,
                                leases_pb2.DeleteRequest(id=lease_id))
            except StargzError as err:  # it expires anyway; do not hide the body's outcome
                log.warning("could not delete lease %s: %s", lease_id, err)
