"""The containerd client's error mapping, config parsing and command line, without daemons."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from stargz.containerd.client import Containerd, map_rpc_error
from stargz.containerd.content import ContentStore
from stargz.containerd.rpull import _diff_ids
from stargz.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    RuntimeIntegrationError,
)


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.INTERNAL, RuntimeIntegrationError),
    (grpc.StatusCode.PERMISSION_DENIED, RuntimeIntegrationError),
])
def test_status_codes_map_to_one_typed_error(code: grpc.StatusCode, cls: type) -> None:
    err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="snapshot x:\n  exists")
    mapped = map_rpc_error(err, "prepare snapshot x")
    assert type(mapped) is cls
    assert str(mapped) == "containerd prepare snapshot x: snapshot x: exists"


def test_metadata_carries_namespace_and_lease(tmp_path: Path) -> None:
    async def check() -> None:
        async with Containerd(tmp_path / "c.sock", "ns1") as ctd:
            assert ctd.metadata() == (("containerd-namespace", "ns1"),)
            ctd.lease_id = "l1"
            assert ctd.metadata() == (("containerd-namespace", "ns1"), ("containerd-lease", "l1"))

    asyncio.run(check())


def test_unreachable_socket_is_a_runtime_integration_error(tmp_path: Path) -> None:
    async def check() -> None:
        async with Containerd(tmp_path / "nothing.sock") as ctd:
            with pytest.raises(RuntimeIntegrationError, match="not reachable"):
                await ContentStore(ctd).info("sha256:" + "0" * 64)

    asyncio.run(check())


def test_diff_ids_come_from_the_config() -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b"]}})
    assert _diff_ids(config.encode(), "sha256:c") == ["sha256:a", "sha256:b"]


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b"{}", b'{"rootfs": {}}', b'{"rootfs": {"diff_ids": "sha256:a"}}',
    b'{"rootfs": {"diff_ids": [1]}}',
])
def test_bad_configs_are_registry_errors(raw: bytes) -> None:
    with pytest.raises(RegistryError, match="sha256:c"):
        _diff_ids(raw, "sha256:c")


def test_cli_refuses_a_bad_platform() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stargz.cli.main", "rpull", "--platform", "linux", "x/y:z"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid platform" in result.stderr
