"""A file whose name holds terminal escapes, in a layer whose chunk of it was tampered with,
served by `stargz mount` (issue 16, point 7): the read fails with EIO and the daemon's log
line names the layer, the file and the offset, escaped: no raw control byte reaches the log."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from stargz.estargz.reader import open_blob
from stargz.estargz.source import BytesSource
from stargz.estargz.writer import BuildOptions, build
from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    OCI_LAYER_GZIP,
    Mounts,
    mounts_fixture,
    noise,
    push,
    put_blob,
    registry_fixture,
    write_layout,
)
from tests.support.registry import RunningRegistry
from tests.unit.test_cli_hostile_names import control_bytes

pytestmark = pytest.mark.integration

NAME = "evil\x1b[31m\n\r\x9b\u202etxt.exe"
SHOWN = "evil\\x1b[31m\\n\\r\\x9b\\u202etxt.exe"
SIZE = 64 << 10


def tampered_layer(layout: Path) -> tuple[dict[str, object], str, str]:
    """The layer with one byte of NAME's compressed data flipped (its TOC, and so its TOC
    digest, intact); returns its descriptor, diff id and digest."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo(NAME)
        info.size, info.mode = SIZE, 0o644
        out.addfile(info, io.BytesIO(noise(SIZE)))
    blob = io.BytesIO()
    result = build(io.BytesIO(tar.getvalue()), blob, BuildOptions())
    data = bytearray(blob.getvalue())
    chunk = open_blob(BytesSource(bytes(data))).verify(result.toc_digest).chunk_at(NAME, 0)
    data[(chunk.compressed_offset + chunk.compressed_end) // 2] ^= 0xFF
    digest = put_blob(layout, bytes(data))
    descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(data),
                  "annotations": result.annotations()}
    return descriptor, result.diff_id, digest


def test_failed_read_of_a_hostile_name_is_logged_escaped(registry: RunningRegistry,
                                                         mounts: Mounts, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    descriptor, diff_id, digest = tampered_layer(layout)
    image = push(write_layout(layout, [(descriptor, diff_id)], "v1"), registry.host,
                 "test/hostile-name:v1")
    mnt = tmp_path / "mnt"
    mounts.mount(f"{registry.host}/{image}", mnt)
    read = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'rb').read()",
                           str(mnt / NAME)], capture_output=True, timeout=60, check=False)
    assert read.returncode != 0 and b"Input/output error" in read.stderr, read.stderr
    text = mounts.daemon_log(mnt)  # read before umount, which removes the state directory
    lines = [line for line in text.splitlines() if digest in line and "offset 0" in line]
    assert lines and SHOWN in lines[0], text
    assert control_bytes(text.encode("utf-8", "surrogateescape")) == []
    mounts.umount(mnt)
