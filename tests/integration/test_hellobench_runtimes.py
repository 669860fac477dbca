"""HelloBench's six runtimes (stargz.hellobench.runtimes), each once, on a busybox image pushed
as gzip and converted by ``stargz convert``, over an emulated 50 Mbit/s, 10 ms link: each pulls,
creates and runs a workload that prints its ready line and then never exits (as a server), and
stops at that line; the link counts what the registry sent, checked against the blob sizes and
the registry's own access log. The Go peers come from $STARGZ_PEERS (/tmp/peers) or are built
from ../shared/peers (cached in the test cache)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.hellobench.daemons import DEFAULT_PEERS
from stargz.hellobench.link import LinkRelay
from stargz.hellobench.model import RUNTIMES, Link, PushedVariant, Workload
from stargz.hellobench.runtimes import PEER_BINARIES, available_runtimes, create_runtime
from tests.support.containerd import MOTD, REPO
from tests.support.images import busybox_rootfs_tar, cached_file, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

STARGZ = str(Path(sys.executable).with_name("stargz"))
PEERS_SOURCE = REPO.parent / "shared" / "peers"
READY = MOTD.strip()
# prints its ready line, then runs on like a server: the run phase must end at the line
WORKLOAD = Workload(("sh", "-c", "cat /etc/motd && exec sleep 600"), READY)
LINK = Link("50mbit-10ms", 50.0, 10.0)
HEADER_BYTES = 1024  # at most this much HTTP status line and headers per response
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                     r'(?P<bytes>\d+|-)')


@pytest.fixture(scope="module", name="peers")
def peers_fixture() -> Path:
    """stargzd and stargzstore: prebuilt by ../shared/peers/build.sh, else built here once."""
    if all((DEFAULT_PEERS / name).is_file() for name in PEER_BINARIES.values()):
        return DEFAULT_PEERS
    sources = b"".join((PEERS_SOURCE / name / "main.go").read_bytes()
                       for name in PEER_BINARIES.values())

    def build(work: Path, out: Path) -> None:
        subprocess.run(["bash", str(PEERS_SOURCE / "build.sh"), str(out)], check=True)

    return cached_file(f"go-peers-{hashlib.sha256(sources).hexdigest()[:16]}", build)


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="module", name="variants")
def variants_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, PushedVariant]:
    """busybox as ``bench/busybox:gzip`` and, by ``stargz convert``, ``:estargz``."""
    work = tmp_path_factory.mktemp("busybox")
    extract_tar(busybox_rootfs_tar(), work / "rootfs")
    layout = make_oci_image(work / "rootfs", work / "oci", "v1")
    plain, lazy = f"{registry.host}/bench/busybox:gzip", f"{registry.host}/bench/busybox:estargz"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", layout,
                    f"docker://{plain}"], check=True)
    subprocess.run([STARGZ, "convert", "--plain-http", "--oci", plain, lazy], check=True,
                   stdout=subprocess.DEVNULL)
    return {tag: PushedVariant("busybox", tag, "bench/busybox", tag, needed_bytes=0,
                               total_bytes=_blob_bytes(registry, tag), round_trips=0)
            for tag in ("gzip", "estargz")}


def _blob_bytes(registry: RunningRegistry, tag: str) -> int:
    """The image's layer and config bytes, from its manifest (``skopeo inspect --raw``)."""
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/bench/busybox:{tag}"],
                         check=True, capture_output=True, text=True).stdout
    manifest = json.loads(raw)
    return int(manifest["config"]["size"]) + sum(int(layer["size"])
                                                 for layer in manifest["layers"])


def _served_since(registry: RunningRegistry, offset: int) -> tuple[int, int]:
    """(body bytes, responses) in the registry's access log after ``offset``."""
    with (registry.workdir / "registry.out").open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace")
    answers = list(_ACCESS.finditer(lines))
    return sum(int(a["bytes"]) for a in answers if a["bytes"] != "-"), len(answers)


def test_every_runtime_is_known_and_the_go_ones_need_the_peers(peers: Path) -> None:
    assert available_runtimes(peers) == RUNTIMES
    assert available_runtimes(None) == tuple(r for r in RUNTIMES if not r.endswith("-go"))


@pytest.mark.parametrize("name", RUNTIMES)
def test_a_runtime_pulls_creates_and_runs_to_the_ready_line(
        name: str, peers: Path, registry: RunningRegistry,
        variants: dict[str, PushedVariant], tmp_path: Path) -> None:
    variant = variants["gzip" if name.endswith("-full") else "estargz"]
    runtime = create_runtime(name, tmp_path / name, peers)
    with LinkRelay(registry.host, LINK) as link:
        runtime.start(link.host)
        try:
            log_offset = (registry.workdir / "registry.out").stat().st_size
            link.reset()
            seconds = runtime.run(variant, WORKLOAD)
            fetched = link.served_bytes
            body, responses = _served_since(registry, log_offset)
            output = list(getattr(runtime, "output", []))
        finally:
            runtime.stop()
    assert set(seconds) == {"pull", "create", "run"}
    assert all(value > 0 for value in seconds.values()), seconds
    assert READY in output
    assert not (tmp_path / name).exists()  # stop() left nothing behind
    # every byte the registry's access log says it sent went through the link, plus headers
    assert responses > 0
    assert body <= fetched <= body + HEADER_BYTES * responses
    if name.endswith("-full"):  # a full pull fetches every blob
        assert fetched >= variant.total_bytes
