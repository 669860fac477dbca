"""`stargz optimize` for real: runc runs the workload over the mounted image, fanotify records
what it opens, the registry receives the converted image. A two-layer busybox image (the top
layer replaces /etc/motd, adds /etc/layer2 and deletes a file) shows records per layer.

The recorder on its own first: a binary exec'd, a shared library mapped by the dynamic loader,
a file read, seen on an overlay; a file only stat'ed or never touched is not recorded."""

from __future__ import annotations

import ctypes.util
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.convert.workload import read_record_entries
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from stargz.optimize.fanotify import AccessRecorder
from tests.integration.test_convert import (
    STARGZ,
    TOC_DIGEST,
    blob_of,
    get,
    manifest_of,
    push,
    stargz,
)
from tests.support.goharness import go_verify
from tests.support.images import busybox_rootfs_tar, extract_tar, make_oci_image
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

REPO = "test/optimize"
MOTD2 = "motd of the second layer\n"
LAYER2 = "second layer\n"
WORKLOAD = ["--entrypoint", '["/bin/sh","-c"]', "--args",
            '["cat /etc/motd /etc/layer2; cat /usr/share/doc/sgid-tool 2>/dev/null; exit 0"]']


@pytest.fixture(name="overlay")
def overlay_fixture(tmp_path: Path) -> Iterator[Path]:
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "mnt"))
    for directory in (lower / "bin", lower / "lib", lower / "data", upper, work, merged):
        directory.mkdir(parents=True)
    shutil.copy("/bin/busybox", lower / "bin/busybox")  # static: nothing else is exec'd
    libz = ctypes.util.find_library("z")
    assert libz is not None
    shutil.copy(next(p for p in Path("/usr/lib/x86_64-linux-gnu").glob(libz + "*")),
                lower / "lib/libz.so")
    for name in ("read.txt", "stat-only.txt", "untouched.txt"):
        (lower / "data" / name).write_text(f"{name}\n")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=True)


def test_the_recorder_sees_exec_mmap_and_read(overlay: Path) -> None:
    recorder = AccessRecorder(overlay)
    recorder.start()
    try:
        subprocess.run([str(overlay / "bin/busybox"), "true"], check=True)
        # the dynamic loader opens the library and maps it: no read() of its code
        subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(overlay)!r} + "
                        "'/lib/libz.so').zlibVersion()"], check=True)
        assert (overlay / "data/read.txt").read_text() == "read.txt\n"
        (overlay / "data/stat-only.txt").stat()
    finally:
        paths = recorder.stop()
    assert paths == ["bin/busybox", "lib/libz.so", "data/read.txt"]


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module", name="source")
def source_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox, then a layer replacing /etc/motd, adding /etc/layer2, deleting a file."""
    work = tmp_path_factory.mktemp("two-layers")
    extract_tar(busybox_rootfs_tar(), work / "rootfs")
    layout = work / "oci"
    image = make_oci_image(work / "rootfs", layout, "v1", ("/bin/sh",))
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    (bundle / "rootfs/etc/motd").write_text(MOTD2)
    (bundle / "rootfs/etc/layer2").write_text(LAYER2)
    (bundle / "rootfs/usr/share/doc/sgid-tool").unlink()
    subprocess.run(["umoci", "repack", "--image", f"{layout}:v1", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    ref = f"{registry.host}/{REPO}:v1"
    push(image, ref)
    return ref


def layer_blobs(registry: RunningRegistry, tag: str, tmp_path: Path) -> list[tuple[Path, str]]:
    """Each layer of the image as a file, with its TOC digest annotation."""
    out = []
    for layer in manifest_of(registry.host, REPO, tag)["layers"]:
        path = tmp_path / f"{tag}-{layer['digest'].split(':')[1][:12]}"
        path.write_bytes(blob_of(registry.host, REPO, layer["digest"]))
        out.append((path, layer["annotations"][TOC_DIGEST]))
    return out


def prioritized(blob: Path, toc_digest: str) -> list[str] | None:
    """The files before the layer's landmark (None when it has `.no.prefetch.landmark`)."""
    names = []
    for entry in open_blob(FileSource(blob)).verify(toc_digest).walk():
        if entry.name == PREFETCH_LANDMARK:
            return names
        if entry.name == NO_PREFETCH_LANDMARK:
            return None
        if entry.type != "dir":
            names.append(entry.name)
    raise AssertionError(f"{blob} has no landmark")


def test_optimize_records_per_layer_and_converts(registry: RunningRegistry, source: str,
                                                 tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    done = stargz("optimize", "--plain-http", *WORKLOAD, "--record-out", str(record), source,
                  f"{registry.host}/{REPO}:opt")
    assert done.stdout.startswith(MOTD2 + LAYER2)  # the workload's own output is shown
    assert "the workload exited with status 0" in done.stderr
    entries = [(e.path, e.layer_index) for e in read_record_entries(record)]
    # runc reads the image's passwd and group for the process, then the shell runs
    assert entries == [("etc/passwd", 0), ("etc/group", 0), ("bin/busybox", 0),
                       ("etc/motd", 1), ("etc/layer2", 1)]
    digests = {e.manifest_digest for e in read_record_entries(record)}
    assert digests == {_manifest_digest(registry, "v1")}
    (bottom, bottom_toc), (top, top_toc) = layer_blobs(registry, "opt", tmp_path)
    assert prioritized(bottom, bottom_toc) == ["etc/passwd", "etc/group", "bin/busybox"]
    assert prioritized(top, top_toc) == ["etc/motd", "etc/layer2"]
    for blob, toc_digest in ((bottom, bottom_toc), (top, top_toc)):
        assert go_verify(blob, toc_digest)["toc_digest"] == toc_digest

    again = stargz("optimize", "--plain-http", "--record-in", str(record), source,
                   f"{registry.host}/{REPO}:from-record")
    assert again.stdout.strip() == done.stdout.strip().splitlines()[-1]  # the same image
    assert "running" not in again.stderr


def _manifest_digest(registry: RunningRegistry, tag: str) -> str:
    import hashlib
    import urllib.request

    request = urllib.request.Request(
        f"http://{registry.host}/v2/{REPO}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return "sha256:" + hashlib.sha256(answer.read()).hexdigest()


def test_prioritize_file_adds_globs_after_the_recorded_files(
        registry: RunningRegistry, source: str, tmp_path: Path) -> None:
    listing = tmp_path / "prioritize.txt"
    listing.write_text("# data the workload will want\nsrv/data/*.bin\n/etc/motd\n")
    stargz("optimize", "--plain-http", "--entrypoint", '["/bin/cat"]', "--args",
           '["/etc/layer2"]', "--prioritize-file", str(listing), source,
           f"{registry.host}/{REPO}:globs")
    (bottom, bottom_toc), (top, top_toc) = layer_blobs(registry, "globs", tmp_path)
    assert prioritized(bottom, bottom_toc) == ["etc/passwd", "etc/group", "bin/busybox",
                                               "srv/data/random.bin", "srv/data/zeros.bin"]
    assert prioritized(top, top_toc) == ["etc/layer2", "etc/motd"]


def test_a_failing_workload_is_reported_and_converted_unless_asked(
        registry: RunningRegistry, source: str) -> None:
    failing = ["--entrypoint", '["/bin/sh","-c"]', "--args", '["cat /etc/layer2; exit 3"]']
    done = stargz("optimize", "--plain-http", *failing, source, f"{registry.host}/{REPO}:failed")
    assert "the workload exited with status 3; it opened" in done.stderr
    assert manifest_of(registry.host, REPO, "failed")["layers"]

    strict = stargz("optimize", "--plain-http", "--fail-on-workload-error", *failing, source,
                    f"{registry.host}/{REPO}:strict", check=False)
    assert strict.returncode == 1
    assert strict.stderr.splitlines()[-1] == (
        "stargz: error: the workload exited with status 3 (--fail-on-workload-error)")
    tags = json.loads(get(f"http://{registry.host}/v2/{REPO}/tags/list"))["tags"]
    assert "strict" not in tags
    assert "stargz-optimize-" not in Path("/proc/self/mountinfo").read_text()  # unmounted


def test_an_interrupted_optimize_converts_nothing_and_unmounts(
        registry: RunningRegistry, source: str) -> None:
    command = [STARGZ, "optimize", "--plain-http", "--entrypoint", '["/bin/sh","-c"]',
               "--args", '["echo started; exec sleep 600"]', "--period", "600", source,
               f"{registry.host}/{REPO}:interrupted"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stderr.splitlines()[-1] == (
        "stargz: error: interrupted while the workload ran: nothing converted")
    tags = json.loads(get(f"http://{registry.host}/v2/{REPO}/tags/list"))["tags"]
    assert "interrupted" not in tags
    assert "stargz-optimize-" not in Path("/proc/self/mountinfo").read_text()


def test_the_workload_stops_on_its_line_or_after_the_period(
        registry: RunningRegistry, source: str) -> None:
    waiting = stargz("optimize", "--plain-http", "--entrypoint", '["/bin/sh","-c"]', "--args",
                     '["cat /etc/layer2 >/dev/null; echo ready; sleep 600"]',
                     "--wait-on-line", "ready", "--period", "300", source,
                     f"{registry.host}/{REPO}:line")
    assert "stopped: --wait-on-line seen" in waiting.stderr
    period = stargz("optimize", "--plain-http", "--entrypoint", '["/bin/sleep"]', "--args",
                    '["600"]', "--period", "1", source, f"{registry.host}/{REPO}:period")
    assert "stopped: --period passed" in period.stderr
