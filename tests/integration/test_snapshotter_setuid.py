"""Containers keep their setuid binaries (issue 16, point 4, the snapshotter side): our
snapshotter's FUSE mount is ``nosuid,nodev`` like every mount `stargz mount` makes, yet a
container running as an unprivileged user still gets euid 0 from the image's setuid-root binary
in a lazily pulled layer, because containerd's overlay is a mount of its own with its own flags
(what containerd's overlayfs snapshotter and the Go reference give containers)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_mount_security import NOBODY_UID, attack_layer_tar, mount_options
from tests.integration.test_rpull_containerd import Stack, build_estargz_layout, push, running_stack
from tests.support.containerd import registry_fixture  # noqa: F401 (fixtures are found by name)
from tests.support.images import busybox_rootfs_tar, cached_file

# Run a command as another uid (the container starts as root; ctr run has no --user).
DROP_SOURCE = b"""#include <grp.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    gid_t id = (gid_t)atoi(argv[1]);
    if (argc < 3 || setgroups(0, NULL) || setgid(id) || setuid((uid_t)atoi(argv[1]))) return 99;
    execv(argv[2], argv + 2);
    return 98;
}
"""


def dropuid_binary() -> Path:
    def build(work: Path, out: Path) -> None:
        work.mkdir(parents=True)
        (work / "dropuid.c").write_bytes(DROP_SOURCE)
        subprocess.run(["cc", "-static", "-O2", "-o", str(out), str(work / "dropuid.c")],
                       check=True)

    return cached_file("dropuid-static-v1", build)


def container_layer_tar() -> bytes:
    """The attack layer (setuid-root bin/euid, device nodes) plus bin/dropuid."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(attack_layer_tar())) as attack, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in attack.getmembers():
            tar.addfile(member, attack.extractfile(member) if member.isfile() else None)
        data = dropuid_binary().read_bytes()
        info = tarfile.TarInfo("bin/dropuid")
        info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()

pytestmark = pytest.mark.integration


@pytest.fixture(name="lazy_stack")
def lazy_stack_fixture(tmp_path: Path, registry: str) -> Iterator[Stack]:
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{registry}"]\n')
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


@pytest.mark.parametrize("layers", [1, 2])
def test_setuid_works_in_a_container_over_lazy_layers(lazy_stack: Stack, registry: str,
                                                      tmp_path: Path, layers: int) -> None:
    tars: list[Path | bytes] = [busybox_rootfs_tar(), container_layer_tar()]
    tars = tars[-layers:]
    source = build_estargz_layout(tmp_path / "oci", tars, "v1")
    image = push(source, registry, f"test/setuid-{layers}:v1")
    pulled = lazy_stack.rpull(image)
    assert f"{layers} lazy, 0 downloaded" in pulled.stdout, pulled.stdout
    assert {"nosuid", "nodev"} <= mount_options(lazy_stack.work / "snap-root" / "fuse")
    # --allow-new-privs: ctr sets no_new_privs unless told (Kubernetes does not by default)
    out = lazy_stack.containerd.ctr(
        "run", "--rm", "--allow-new-privs", "--snapshotter", "stargz", image,
        f"t-setuid-{layers}", "/bin/dropuid", str(NOBODY_UID), "/bin/euid").stdout
    assert out == "0\n"  # the image's setuid-root binary, started by uid 65534
