"""What `stargz mount` fetches, and how it fails: the registry behind a counting, fault-injecting
proxy, background fetch off so that what the registry serves is only what reads needed.

- one small file read from a cold mount costs the footer + TOC and exactly its chunk's bytes;
- a second mount of the image, or of another image whose layers hold the same chunks, fetches
  no chunk again (the on-disk cache is shared);
- a registry that stalls mid-read gives EIO after the configured timeout, never a hang, and reads
  work again when it answers; a tampered chunk gives EIO and a log line naming the layer, the file
  and the offset, and the bad bytes are not kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.estargz.chunks import Chunk
from stargz.estargz.reader import TAIL_READ, VerifiedBlob, open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.writer import TOC_DIGEST_ANNOTATION
from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    BIG_FILE,
    BIG_SIZE,
    LAYER2_TEXT,
    Mounts,
    build_images,
    mounts_fixture,
    noise,
    registry_fixture,
)
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

FETCH_TIMEOUT_S = 3
READ_TIMEOUT_S = 60  # a read still running after this has hung: the test fails, not waits
SMALL_FILE = "etc/layer2"


@pytest.fixture(scope="module", name="layouts")
def layouts_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, Path]:
    """Two copies of the image: level 6 (``test/estargz``) and level 1 (``test/level1``): other
    blobs, the same chunks."""
    first = tmp_path_factory.mktemp("first")
    build_images(registry.host, first)
    second = tmp_path_factory.mktemp("second")
    build_images(registry.host, second, level=1, suffix="-level1")
    return {"test/estargz:v1": first / "estargz", "test/estargz-level1:v1": second / "estargz"}


@pytest.fixture(name="proxy")
def proxy_fixture(registry: RunningRegistry) -> Iterator[FaultProxy]:
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


class Layer:
    """A layer of a pushed image as its local copy says: digest, size, verified TOC."""

    def __init__(self, layout: Path, descriptor: dict[str, object]) -> None:
        self.digest = str(descriptor["digest"])
        self.path = layout / "blobs" / "sha256" / self.digest.split(":")[1]
        self.size = self.path.stat().st_size
        toc_digest = descriptor["annotations"][TOC_DIGEST_ANNOTATION]  # type: ignore[index]
        self.blob: VerifiedBlob = open_blob(FileSource(self.path)).verify(toc_digest)

    def chunk(self, path: str, offset: int = 0) -> Chunk:
        return self.blob.chunk_at(path, offset)


def image_layers(layout: Path) -> list[Layer]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [Layer(layout, d) for d in manifest["layers"]]


def blob_bytes(proxy: FaultProxy, layer: Layer | None = None) -> int:
    where = f"/blobs/{layer.digest}" if layer is not None else "/blobs/"
    return proxy.bytes_served(where, method="GET")


def read_in_child(path: Path, offset: int, size: int) -> subprocess.CompletedProcess[bytes]:
    """Read in another process, with a deadline: a hung read fails the test instead of it."""
    code = ("import sys\nwith open(sys.argv[1], 'rb') as f:\n f.seek(int(sys.argv[2]))\n"
            " sys.stdout.buffer.write(f.read(int(sys.argv[3])))")
    return subprocess.run([sys.executable, "-c", code, str(path), str(offset), str(size)],
                          capture_output=True, timeout=READ_TIMEOUT_S, check=False)


def read_everything(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                total += len(path.read_bytes())
    return total


def write_config(work: Path, cache_dir: Path | None = None) -> Path:
    config = work / "stargz.toml"
    lines = ["no_background_fetch = true", "[blob]", f"fetch_timeout_sec = {FETCH_TIMEOUT_S}",
             "max_retries = 1"]
    if cache_dir is not None:
        lines += ["[cache]", f'directory = "{cache_dir}"']
    config.write_text("\n".join(lines) + "\n")
    return config


def test_one_small_file_costs_the_toc_and_its_chunk(mounts: Mounts, proxy: FaultProxy,
                                                   layouts: dict[str, Path],
                                                   tmp_path: Path) -> None:
    base, top = image_layers(layouts["test/estargz:v1"])
    mnt = tmp_path / "mnt"
    mounts.mount(f"{proxy.host}/test/estargz:v1", mnt, "--config", str(write_config(tmp_path)))
    at_mount = blob_bytes(proxy, top)
    toc_start = top.blob.footer.toc_range(top.size)[0]
    assert at_mount == max(min(TAIL_READ, top.size), top.size - toc_start)
    assert (mnt / SMALL_FILE).read_bytes() == LAYER2_TEXT
    chunk = top.chunk(SMALL_FILE)
    assert blob_bytes(proxy, top) - at_mount == chunk.compressed_end - chunk.compressed_offset
    assert blob_bytes(proxy, base) <= min(TAIL_READ, base.size)  # only its footer and TOC
    print(f"cold read of {SMALL_FILE}: {at_mount} bytes of footer+TOC, "
          f"{chunk.compressed_end - chunk.compressed_offset} bytes of chunk, "
          f"layer of {top.size} bytes")
    assert blob_bytes(proxy) < BIG_SIZE // 4  # two tail reads of 512 KiB and 115 bytes


def test_second_mount_and_other_image_fetch_no_cached_chunk(
        mounts: Mounts, proxy: FaultProxy, layouts: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path, cache_dir=tmp_path / "cache")
    first, second, other = tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"
    mounts.mount(f"{proxy.host}/test/estargz:v1", first, "--config", str(config))
    expected_total = read_everything(first)
    cold = blob_bytes(proxy)
    mounts.umount(first)

    for image, mnt in (("test/estargz:v1", second), ("test/estargz-level1:v1", other)):
        before_mount = blob_bytes(proxy)
        mounts.mount(f"{proxy.host}/{image}", mnt, "--config", str(config))
        metadata = blob_bytes(proxy) - before_mount
        assert read_everything(mnt) == expected_total
        assert blob_bytes(proxy) - before_mount == metadata  # not one chunk fetched again
        layers = image_layers(layouts[image])
        assert metadata <= sum(min(TAIL_READ, layer.size) for layer in layers)
        print(f"{image} again: {metadata} bytes (footer+TOC) vs {cold} cold")
    assert cold > BIG_SIZE  # the first mount did fetch the chunks


def test_stalled_registry_gives_eio_then_recovers(mounts: Mounts, proxy: FaultProxy,
                                                  layouts: dict[str, Path],
                                                  tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mounts.mount(f"{proxy.host}/test/estargz:v1", mnt, "--config", str(write_config(tmp_path)),
                 "--timeout", "1", "--retries", "1")
    proxy.add_fault(Fault("stall", path_contains="/blobs/", times=1000, only_ranged=True,
                          stall_seconds=120))
    failed = read_in_child(mnt / BIG_FILE, 3 << 20, 4096)
    assert failed.returncode != 0
    assert b"Input/output error" in failed.stderr
    assert failed.stdout == b""
    proxy.clear()
    again = read_in_child(mnt / BIG_FILE, 3 << 20, 4096)
    assert again.returncode == 0, again.stderr
    assert again.stdout == noise(BIG_SIZE)[3 << 20:(3 << 20) + 4096]


def _tamper(registry: RunningRegistry, layer: Layer, offset: int) -> bytes:
    """Flip one byte of the blob in the registry's own storage; returns the original byte."""
    hex_digest = layer.digest.split(":")[1]
    data = (registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hex_digest[:2]
            / hex_digest / "data")
    with data.open("r+b") as blob:
        blob.seek(offset)
        original = blob.read(1)
        blob.seek(offset)
        blob.write(bytes([original[0] ^ 0xFF]))
    return original


def _restore(registry: RunningRegistry, layer: Layer, offset: int, original: bytes) -> None:
    hex_digest = layer.digest.split(":")[1]
    data = (registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hex_digest[:2]
            / hex_digest / "data")
    with data.open("r+b") as blob:
        blob.seek(offset)
        blob.write(original)


def test_tampered_chunk_is_eio_logged_and_not_cached(
        mounts: Mounts, proxy: FaultProxy, registry: RunningRegistry, layouts: dict[str, Path],
        tmp_path: Path) -> None:
    _, top = image_layers(layouts["test/estargz:v1"])
    chunk = top.chunk(BIG_FILE, 3 << 20)
    where = (chunk.compressed_offset + chunk.compressed_end) // 2  # inside the stored data
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    mounts.mount(f"{proxy.host}/test/estargz:v1", mnt, "--config",
                 str(write_config(tmp_path, cache_dir=cache)))
    original = _tamper(registry, top, where)
    try:
        failed = read_in_child(mnt / BIG_FILE, chunk.chunk_offset, 4096)
    finally:
        _restore(registry, top, where, original)
    assert failed.returncode != 0
    assert b"Input/output error" in failed.stderr
    log = mounts.daemon_log(mnt)
    lines = [line for line in log.splitlines() if BIG_FILE in line]
    assert lines, log
    assert str(chunk.chunk_offset) in lines[0] and top.digest in lines[0], lines[0]
    again = read_in_child(mnt / BIG_FILE, chunk.chunk_offset, 4096)
    assert again.returncode == 0, again.stderr
    assert again.stdout == noise(BIG_SIZE)[chunk.chunk_offset:chunk.chunk_offset + 4096]
