"""Restarts without the registry, for real: containerd + runc + our snapshotter with lazy layers,
the registry behind a proxy that is taken down (connections refused) and brought back.

After a workload ran once, the snapshotter is killed (SIGKILL) and started again with the
registry gone: the layers are mounted again from the TOCs kept beside the chunk cache and the
workload runs from disk; a file never read fails with EIO (after the configured fetch timeout,
logged with the layer) and is read once the registry is back."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_rpull_containerd import (  # noqa: F401 (fixtures are found by name)
    BIG_FILE,
    BIG_SIZE,
    LAYER2_TEXT,
    MOTD,
    WORKLOAD,
    Stack,
    _layer_digests,
    _noise,
    estargz_image_fixture,
    image_fixture,
    registry_fixture,
    running_stack,
)
from tests.support.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.integration

FETCH_TIMEOUT_S = 4


class OutageProxy(FaultProxy):
    """The registry as the snapshotter sees it: it can go away (its port refuses connections)
    and come back on the same port."""

    def go_down(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)

    def come_back(self) -> None:
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop).result()


@pytest.fixture(name="proxy")
def proxy_fixture(registry: str) -> Iterator[OutageProxy]:
    host, port = registry.rsplit(":", 1)
    with OutageProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture(name="lazy_stack")
def lazy_stack_fixture(tmp_path: Path, proxy: OutageProxy) -> Iterator[Stack]:
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{proxy.host}"]\nno_background_fetch = true\n'
                      f'[lazy.blob]\nfetch_timeout_sec = {FETCH_TIMEOUT_S}\n')
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


def _wait_cache_settled(cache: Path) -> None:
    """Until the write-behind disk cache has written what the run read (no temp file, the same
    entries twice in a row)."""
    before: list[str] = []
    for _ in range(100):
        now = sorted(p.name for p in (cache / "sha256").rglob("*"))
        if now and now == before and not any(n.startswith(".tmp-") for n in now):
            return
        before = now
        time.sleep(0.5)
    raise AssertionError(f"the chunk cache under {cache} did not settle")


def test_a_killed_snapshotter_restarts_and_runs_from_disk_without_the_registry(
        lazy_stack: Stack, proxy: OutageProxy, estargz_image: str) -> None:
    image = proxy.host + "/" + estargz_image.split("/", 1)[1]
    lazy_stack.rpull(image)
    assert lazy_stack.run(image, "t-once", *WORKLOAD) == MOTD + LAYER2_TEXT
    root = lazy_stack.work / "snap-root"
    _wait_cache_settled(root / "cache")
    layers = _layer_digests(estargz_image)
    kept = list((root / "cache" / "tocs").iterdir())
    assert len(kept) == len(layers) and all(p.stat().st_mode & 0o077 == 0 for p in kept)

    proxy.go_down()
    assert lazy_stack.snapshotter.proc is not None
    lazy_stack.snapshotter.proc.kill()  # kill -9: no unmount, no flush
    lazy_stack.snapshotter.proc.wait()
    lazy_stack.snapshotter.start()
    served_before = len(proxy.served())
    out = lazy_stack.containerd.ctr_retry(
        "run", "--rm", "--snapshotter", "stargz", image, "t-offline", *WORKLOAD)
    assert out == MOTD + LAYER2_TEXT
    log = lazy_stack.snapshotter.log_text()
    assert all(f"resolved layer {d} from its TOC kept on disk" in log for d in layers), log[-3000:]
    assert "could not be mounted again" not in log

    # a file never read needs the registry: EIO after the fetch timeout, never a hang
    started = time.monotonic()
    failed = lazy_stack.containerd.ctr(
        "run", "--rm", "--snapshotter", "stargz", image, "t-unread", "sha256sum", "/" + BIG_FILE,
        check=False, timeout=FETCH_TIMEOUT_S * 10)
    took = time.monotonic() - started
    assert failed.returncode != 0
    assert "Input/output error" in failed.stdout + failed.stderr, failed.stdout + failed.stderr
    assert f"layer {layers[-1]}: read of '{BIG_FILE}' failed" in lazy_stack.snapshotter.log_text()
    assert len(proxy.served()) == served_before  # it was down all along
    print(f"offline: unread file failed with EIO after {took:.1f} s "
          f"(fetch timeout {FETCH_TIMEOUT_S} s)")

    proxy.come_back()  # on-demand reads work again, with no restart
    out = lazy_stack.containerd.ctr(
        "run", "--rm", "--snapshotter", "stargz", image, "t-back", "sha256sum", "/" + BIG_FILE
    ).stdout
    assert out.split()[0] == hashlib.sha256(_noise(BIG_SIZE)).hexdigest()
    assert proxy.served("/blobs/", method="GET")


def test_a_read_from_a_hung_registry_fails_with_eio_and_works_once_it_answers(
        lazy_stack: Stack, proxy: OutageProxy, estargz_image: str) -> None:
    image = proxy.host + "/" + estargz_image.split("/", 1)[1]
    lazy_stack.rpull(image)
    assert lazy_stack.run(image, "t-once", *WORKLOAD) == MOTD + LAYER2_TEXT
    top = _layer_digests(estargz_image)[-1]
    # the registry accepts and then never finishes an answer: reads must not hang with it
    proxy.add_fault(Fault("stall", path_contains="/blobs/", method="GET", times=1000,
                          stall_seconds=600))
    started = time.monotonic()
    failed = lazy_stack.containerd.ctr(
        "run", "--rm", "--snapshotter", "stargz", image, "t-hung", "sha256sum", "/" + BIG_FILE,
        check=False, timeout=FETCH_TIMEOUT_S * 10)
    print(f"hung registry: EIO after {time.monotonic() - started:.1f} s "
          f"(fetch timeout {FETCH_TIMEOUT_S} s)")
    assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed.stderr
    assert f"layer {top}: read of '{BIG_FILE}' failed" in lazy_stack.snapshotter.log_text()
    proxy.clear()
    out = lazy_stack.containerd.ctr(
        "run", "--rm", "--snapshotter", "stargz", image, "t-answers", "sha256sum", "/" + BIG_FILE
    ).stdout
    assert out.split()[0] == hashlib.sha256(_noise(BIG_SIZE)).hexdigest()
