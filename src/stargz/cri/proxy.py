"""The CRI ImageService proxy: kubelet (``--image-service-endpoint``) calls the snapshotter's
socket, every call goes on to containerd's CRI unchanged (raw bytes, any method of
``runtime.v1.ImageService`` or ``runtime.v1alpha2.ImageService``), and each PullImage's
credentials are kept in the process keychain under the image's registry host before the pull is
forwarded: containerd Prepares the image's layers during the pull, and our lazy layers read
their blobs with them. A failed pull puts back the credentials it replaced.

Configured by ``[cri_keychain] enable_keychain = true`` and ``image_service_path`` (containerd's
socket), as the reference; served on the snapshotter's own socket (as the reference does).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from stargz.config import FileConfig
from stargz.cri.api import runtime_v1_pb2
from stargz.cri.auth import credentials_from_auth
from stargz.errors import ConfigError, InvalidReference
from stargz.registry.credentials import Credentials
from stargz.registry.keychain import HostKeychain, process_keychain
from stargz.registry.reference import Reference

log = logging.getLogger("stargz.cri")

IMAGE_SERVICES = ("runtime.v1.ImageService", "runtime.v1alpha2.ImageService")
PULL_IMAGE = "PullImage"

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass(frozen=True)
class CriKeychainSettings:
    image_service_path: Path


def settings_from_config(config: FileConfig, where: str) -> CriKeychainSettings | None:
    """``[cri_keychain]`` of a loaded config file; None unless ``enable_keychain = true``."""
    table = config.cri_keychain
    if not table.enable_keychain:
        return None
    if not table.image_service_path.startswith("/"):
        raise ConfigError(f"config {where}: key 'cri_keychain.image_service_path' must be an "
                          f"absolute path, not {table.image_service_path!r}")
    return CriKeychainSettings(Path(table.image_service_path))


class CriImageProxy(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no types
    """A generic handler for the snapshotter's grpc.aio server (``add_generic_rpc_handlers``)."""

    def __init__(self, settings: CriKeychainSettings,
                 keychain: HostKeychain | None = None) -> None:
        self.settings = settings
        self.keychain = keychain if keychain is not None else process_keychain()
        self._channel: grpc.aio.Channel | None = None

    def service(self, details: Any) -> Any:
        """The handler of one call's method; None (UNIMPLEMENTED) outside the ImageService."""
        method: str = details.method
        service, _, name = method.lstrip("/").rpartition("/")
        if service not in IMAGE_SERVICES:
            return None
        behavior: Behavior = partial(self._pull if name == PULL_IMAGE else self._forward, method)
        return grpc.unary_unary_rpc_method_handler(behavior)  # bytes in, bytes out

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _forward(self, method: str, request: bytes,
                       context: grpc.aio.ServicerContext) -> bytes:
        """Send ``request`` on to containerd; its answer or its error, as they are."""
        if self._channel is None:  # made on the server's loop, at the first call
            self._channel = grpc.aio.insecure_channel(f"unix://{self.settings.image_service_path}")
        call = self._channel.unary_unary(method)
        try:
            response: bytes = await call(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
        return response

    async def _pull(self, method: str, request: bytes,
                    context: grpc.aio.ServicerContext) -> bytes:
        kept = self._keep_credentials(request)
        try:
            return await self._forward(method, request, context)
        except BaseException:
            if kept is not None:  # wrong credentials must not replace working ones
                self.keychain.restore(*kept)
            raise

    def _keep_credentials(self, request: bytes
                          ) -> tuple[str, Credentials, Credentials | None] | None:
        """Keep a PullImage's credentials under its image's host: (host, kept, replaced)."""
        try:
            pull = runtime_v1_pb2.PullImageRequest.FromString(request)  # v1alpha2: same wire
            host = Reference.parse(pull.image.image).registry
        except (DecodeError, InvalidReference):
            return None  # containerd says what is wrong with it
        if not pull.HasField("auth") or not host:
            return None
        credentials = credentials_from_auth(pull.auth, host)
        if credentials is None:
            return None
        replaced = self.keychain.put(host, credentials)
        log.info("CRI keychain: credentials of user %s for %s kept for the lazy layers of %s",
                 credentials.username or "<identity token>", host, pull.image.image)
        return host, credentials, replaced
