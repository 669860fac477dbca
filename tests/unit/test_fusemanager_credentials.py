"""The CRI keychain's credentials reach the FUSE manager (which fetches the layers) with each
prepare and restore, are kept in its memory, and never land in its state file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from stargz.errors import RuntimeIntegrationError
from stargz.registry.credentials import Credentials
from stargz.registry.keychain import process_keychain
from stargz.snapshotter.fusemanager import ManagedLazyLayers, Manager, _with_credentials
from stargz.snapshotter.remote import LABEL_SNAPSHOT_REF, LABEL_STARGZ_REFERENCE

HOST = "registry.example:5000"
LABELS = {LABEL_SNAPSHOT_REF: "chain-1", LABEL_STARGZ_REFERENCE: f"{HOST}/app:v1"}


class RecordingMounts:
    """LazyMounts' three calls; answers a directory per prepare."""

    def __init__(self) -> None:
        self.seen_credentials: list[Credentials | None] = []

    async def prepare_remote(self, labels: Mapping[str, str]) -> str | None:
        self.seen_credentials.append(process_keychain().get(HOST))
        return "/mnt/layer-1"

    async def restore(self, labels: Mapping[str, str]) -> str | None:
        return await self.prepare_remote(labels)

    async def release(self, directory: str) -> None:
        return None


@pytest.fixture
def clean_keychain() -> Iterator[None]:
    yield
    keychain = process_keychain()
    for host in keychain.hosts():
        got = keychain.get(host)
        assert got is not None
        keychain.restore(host, got, None)


def test_credentials_travel_with_prepare_and_stay_out_of_the_state_file(
        tmp_path: Path, clean_keychain: None) -> None:
    secret = "s3cret-from-kubelet"
    handed = Credentials("kube", secret)
    process_keychain().put(HOST, handed)
    request = _with_credentials({"op": "prepare", "name": "chain-1", "labels": dict(LABELS)},
                                LABELS)
    process_keychain().restore(HOST, handed, None)  # as in a manager process of its own
    assert process_keychain().get(HOST) is None

    mounts = RecordingMounts()
    manager = Manager(cast(Any, mounts), tmp_path)
    reply = asyncio.run(manager.handle(request))

    assert reply == {"directory": "/mnt/layer-1"}
    assert mounts.seen_credentials == [handed]  # the layer's fetches see them
    state = (tmp_path / "held.json").read_text()
    assert secret not in state and "chain-1" in json.loads(state)


def test_no_credentials_for_other_hosts_or_without_an_image(clean_keychain: None) -> None:
    process_keychain().put("other.example", Credentials("u", "p"))
    request = _with_credentials({"op": "prepare"}, LABELS)
    assert "credentials" not in request
    assert "credentials" not in _with_credentials({"op": "prepare"}, {})


def test_a_manager_that_never_answers_fails_the_call_after_its_timeout(tmp_path: Path) -> None:
    address = tmp_path / "manager.sock"
    received: list[bytes] = []

    async def test() -> None:
        answered = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.readline())
            await reader.read()  # holds the connection, answers nothing, until the caller leaves
            writer.close()
            answered.set()

        server = await asyncio.start_unix_server(silent, str(address))
        async with server:
            layers = ManagedLazyLayers(address, call_timeout=0.3)
            with pytest.raises(RuntimeIntegrationError, match="did not answer a prepare"):
                await asyncio.wait_for(layers.prepare_remote("k", [], LABELS), 30)
            await asyncio.wait_for(answered.wait(), 30)

    asyncio.run(test())
    assert json.loads(received[0])["name"] == "chain-1"
