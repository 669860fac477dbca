"""Logs as the reference's users expect them: its level names, a time on every line, and INFO
one line per meaningful event, never one per HTTP request (httpx logs each at INFO itself)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    estargz_image_fixture,
    registry_fixture,
    running_stack,
)
from tests.support.faultproxy import FaultProxy
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

STARGZ = str(Path(sys.executable).with_name("stargz"))
# 2024-12-02T10:11:12.345+00:00 INFO stargz.snapshotter.lazy: ...
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def _per_request_lines(text: str, host: str) -> list[str]:
    """Lines naming one request: httpx's "HTTP Request: GET http://host/v2/..." or our own."""
    return [line for line in text.splitlines() if f"{host}/v2/" in line or "HTTP Request" in line]


@pytest.fixture(scope="module", name="layout")
def layout_fixture(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("busybox-image")
    extract_tar(busybox_rootfs_tar(), work / "rootfs")
    return make_oci_image(work / "rootfs", work / "oci", "v1", ("/bin/sh",))


@pytest.fixture(scope="module", name="plain_registry")
def plain_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _convert(level: str, layout: str, dest: str) -> str:
    done = subprocess.run([STARGZ, "--log-level", level, "convert", "--plain-http", layout, dest],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_convert_at_info_logs_no_request_and_debug_does(plain_registry: RunningRegistry,
                                                        layout: str) -> None:
    host = plain_registry.host
    quiet = _convert("info", layout, f"{host}/logs/busybox:info")
    assert _per_request_lines(quiet, host) == []
    # the same command at debug does log its requests, each on a timed line: the check above
    # would have seen them
    loud = _convert("debug", layout, f"{host}/logs/busybox:debug")
    requests = _per_request_lines(loud, host)
    assert len(requests) >= 3, loud
    assert all(LINE.match(line) for line in requests), requests
    assert not any(line.startswith("DEBUG httpcore") for line in loud.splitlines())
    # trace adds the libraries' own debug lines (httpcore's connection steps)
    traced = _convert("trace", layout, f"{host}/logs/busybox:trace")
    assert any(" DEBUG httpcore." in line for line in traced.splitlines()), traced[-2000:]


@pytest.mark.parametrize("level", ["warn", "fatal", "panic", "TRACE"])
def test_the_references_level_names_are_taken(level: str, layout: str) -> None:
    done = subprocess.run([STARGZ, "--log-level", level, "blob", "ls", "/nonexistent.blob"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # the file is missing: the level itself was accepted
    assert done.stderr.startswith("stargz: error:"), done.stderr


def test_an_unknown_level_is_a_usage_error() -> None:
    done = subprocess.run([STARGZ, "--log-level", "loud", "blob", "ls", "x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "trace, debug, info, warn, warning, error, fatal, panic" in done.stderr


@pytest.fixture(name="proxy")
def proxy_fixture(registry: str) -> Iterator[FaultProxy]:
    host, port = registry.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def test_snapshotter_at_info_logs_events_not_requests(tmp_path: Path, proxy: FaultProxy,
                                                      estargz_image: str) -> None:
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{proxy.host}"]\nno_background_fetch = true\n')
    args = ["--config", str(config), "--log-level", "info"]  # after the stack's own debug
    image = proxy.host + "/" + estargz_image.split("/", 1)[1]
    with running_stack(tmp_path, extracting=False, extra_args=args) as stack:
        stack.rpull(image)
        assert stack.run(image, "t-logs", *WORKLOAD) == MOTD + LAYER2_TEXT
        log = stack.snapshotter.log_text()
    ranged = proxy.served("/blobs/", method="GET")
    assert len(ranged) >= 4  # footer/TOC of two layers and the files the run read
    assert _per_request_lines(log, proxy.host) == []
    events = [line for line in log.splitlines() if LINE.match(line)]
    assert any("mounted lazily" in line and " INFO " in line for line in events), log[-3000:]
    assert not any(" DEBUG " in line for line in events)
