"""Where the prefetch is waited for, with real daemons (containerd, our snapshotter, a registry
behind a proxy that holds the prefetch range): as in the reference, a layer's Prepare (the pull)
returns once the layer is mounted, and the container's Prepare (``ctr containers create``) waits
for the prefetch of the remote layers below it, at most ``prefetch_timeout_sec``. In process
and through the FUSE manager."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_fuse_manager import _start_manager
from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    BIG_SIZE,
    Stack,
    _layer_digests,
    registry_fixture,
    running_stack,
)
from tests.integration.test_snapshotter_config_keys import (  # noqa: F401
    _via,
    landmark_image_fixture,
)
from tests.support.containerd import stop_process
from tests.support.faultproxy import FaultProxy, _Request

pytestmark = pytest.mark.integration

LOG_WAIT_S = 120.0  # a bound on a poll for a log line, not a measure


class PrefetchGate(FaultProxy):
    """Holds each ranged GET of blob ``digest`` but the suffix one (footer and TOC: the tail
    read) until ``opened``: the prefetch range, the landmark's files at the blob's start."""

    def __init__(self, host: str, port: int, digest: str) -> None:
        super().__init__(host, port)
        self.digest = digest
        self.opened = threading.Event()

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        ranged = request.header("range") or "bytes=-"
        if self.digest in request.target and not ranged.startswith("bytes=-"):
            try:
                while not self.opened.is_set():
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # the proxy stops: drop the request quietly
                return
        await super()._answer(request, writer)


@contextlib.contextmanager
def _gated(registry: str, digest: str) -> Iterator[PrefetchGate]:
    host, port = registry.rsplit(":", 1)
    gate = PrefetchGate(host, int(port), digest)
    with gate:
        try:
            yield gate
        finally:
            gate.opened.set()  # nothing held past the test


@contextlib.contextmanager
def _stack(work: Path, toml: str, managed: bool) -> Iterator[tuple[Stack, Path]]:
    """The stack and the log holding the lazy layers' lines (the manager's when ``managed``)."""
    config = work / "config.toml"
    manager = None
    if managed:
        toml += f'[fuse_manager]\nenable = true\naddress = "{work / "fm.sock"}"\n'
    config.write_text(toml)
    if managed:
        manager = _start_manager(work, config)
    try:
        with running_stack(work, extracting=False, extra_args=["--config", str(config)]) as stack:
            yield stack, (work / "manager.log" if managed else work / "snap.log")
    finally:
        if manager is not None:
            stop_process(manager)


@contextlib.contextmanager
def _pulled_behind_a_gate(work: Path, registry: str, landmark_image: str, timeout_s: int,
                          managed: bool) -> Iterator[tuple[PrefetchGate, Stack, Path, str, str]]:
    """The landmark image pulled lazily through a gate holding its top layer's prefetch range
    (its 12 MiB file is before the landmark), with ``prefetch_timeout_sec = timeout_s``:
    the gate, the stack, its log, the image as pulled and the top layer's digest."""
    top = _layer_digests(landmark_image)[-1]
    with _gated(registry, top) as gate, _stack(work, f"""
plain_http = ["{gate.host}"]
no_background_fetch = true
prefetch_timeout_sec = {timeout_s}
""", managed) as (stack, log):
        image = _via(gate, landmark_image)
        assert "2 lazy" in stack.rpull(image).stdout, log.read_text()[-3000:]
        yield gate, stack, log, image, top


def _prefetch_done(stack: Stack, digest: str) -> object:
    out = subprocess.run([sys.executable, "-m", "stargz.cli.main", "status", "--root",
                          str(stack.snapshotter.root), "--json"], check=True,
                         capture_output=True, text=True).stdout
    [row] = [r for r in json.loads(out) if r["layer"] == digest]
    return row["prefetch_done"]


def _wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + LOG_WAIT_S
    while line not in log.read_text():
        assert time.monotonic() < deadline, f"{line!r} never logged:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.parametrize("managed", [False, True], ids=["in-process", "fuse-manager"])
def test_the_pull_does_not_wait_for_the_prefetch_the_container_does(
        tmp_path: Path, registry: str, landmark_image: str, managed: bool) -> None:
    with _pulled_behind_a_gate(tmp_path, registry, landmark_image, 600, managed) as (
            gate, stack, log, image, top):
        # the pull returned with the prefetch range held at the registry
        assert gate.bytes_served(top, method="GET") < BIG_SIZE // 8
        assert _prefetch_done(stack, top) is False

        created: list[object] = []  # what the registry had served when the create returned

        def create() -> None:
            result = stack.containerd.ctr("containers", "create", "--snapshotter", "stargz",
                                          image, "t-wait", check=False, timeout=600)
            created.append((result.returncode, gate.bytes_served(top, method="GET")))

        thread = threading.Thread(target=create)
        thread.start()
        try:
            _wait_for_line(log, f"layer {top}: waiting for its prefetch")
            assert created == []  # the container's Prepare waits: the range is still held
        finally:
            gate.opened.set()
            thread.join()
        [(code, served)] = created
        assert code == 0
        assert served > BIG_SIZE  # the whole prefetch range came before the create returned
        assert _prefetch_done(stack, top) is True
        stack.containerd.ctr("containers", "rm", "t-wait")


def test_prefetch_timeout_sec_bounds_the_containers_wait(
        tmp_path: Path, registry: str, landmark_image: str) -> None:
    with _pulled_behind_a_gate(tmp_path, registry, landmark_image, 1, managed=False) as (
            gate, stack, log, image, top):
        # the range stays held: the create goes on after prefetch_timeout_sec, and says so
        stack.containerd.ctr("containers", "create", "--snapshotter", "stargz", image, "t-late")
        assert gate.bytes_served(top, method="GET") < BIG_SIZE // 8
        assert _prefetch_done(stack, top) is False
        text = log.read_text()
        assert f"layer {top}: waiting for its prefetch" in text
        assert f"layer {top}: prefetch not done after 1 s, the container starts anyway" in text
        stack.containerd.ctr("containers", "rm", "t-late")
