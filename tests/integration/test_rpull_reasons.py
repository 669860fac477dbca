"""`stargz rpull` says why each layer it downloads was not mounted lazily: a private image
(basic auth) whose credentials rpull has (--user) but the snapshotter has not is pulled in
full, one line per layer with the snapshotter's reason (auth), and a hint on where the
snapshotter takes credentials from; --user never reaches the snapshotter."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_rpull_containerd import (
    MOTD,
    REPO,
    RPULL,
    WORKLOAD,
    Stack,
    _layer2_tar,
    build_estargz_layout,
    running_stack,
)
from tests.support.containerd import LAYER2_TEXT
from tests.support.images import busybox_rootfs_tar
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", name="private")
def private_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("private"), auth="basic") as registry:
        yield registry


@pytest.fixture(name="stack")
def stack_fixture(tmp_path: Path, private: RunningRegistry) -> Iterator[Stack]:
    assert not any(name.startswith("STARGZ_") for name in os.environ)  # no env credentials
    assert not Path("/root/.docker/config.json").exists()  # nor root's Docker config
    config = tmp_path / "snapshotter.toml"
    config.write_text(f'[lazy]\nplain_http = ["{private.host}"]\nno_background_fetch = true\n')
    with running_stack(tmp_path, extracting=False, extra_args=["--config", str(config)]) as stack:
        yield stack


def _push(registry: RunningRegistry, work: Path) -> str:
    source = build_estargz_layout(work / "oci", [busybox_rootfs_tar(), _layer2_tar(big=False)],
                                  "v1")
    ref = f"{registry.host}/private/estargz:v1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
                    f"{registry.username}:{registry.password}", source, f"docker://{ref}"],
                   check=True)
    return ref


def _rpull(stack: Stack, registry: RunningRegistry, image: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *RPULL, "--plain-http", "--address", str(stack.containerd.address),
               "--snapshotter-root", str(stack.snapshotter.root), "--user",
               str(registry.username), "--password-stdin", image]
    return subprocess.run(command, input=f"{registry.password}\n", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def test_rpull_prints_the_auth_reason_for_each_downloaded_layer(
        stack: Stack, private: RunningRegistry, tmp_path: Path) -> None:
    image = _push(private, tmp_path)
    done = _rpull(stack, private, image)
    assert done.returncode == 0, done.stderr + stack.snapshotter.log_text()[-3000:]
    print(done.stdout)
    assert "0 lazy, 2 downloaded" in done.stdout
    reasons = [line for line in done.stdout.splitlines() if "downloaded in full" in line]
    assert len(reasons) == 2 and all("(auth)" in line for line in reasons), done.stdout
    assert done.stdout.count("hint: the snapshotter fetches layers with its own credentials") == 1
    assert str(private.password) not in done.stdout + done.stderr
    assert str(private.password) not in stack.snapshotter.log_text()
    # rpull's credentials stayed with rpull: nothing in containerd's snapshot labels
    labels = stack.containerd.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout
    assert str(private.password) not in labels
    out = stack.containerd.ctr("run", "--rm", "--snapshotter", "stargz", image, "t-private",
                               *WORKLOAD).stdout
    assert out == MOTD + LAYER2_TEXT


def test_a_second_pull_says_the_layers_are_present(
        stack: Stack, private: RunningRegistry, tmp_path: Path) -> None:
    image = _push(private, tmp_path)
    assert _rpull(stack, private, image).returncode == 0
    again = _rpull(stack, private, image)
    assert "0 lazy, 0 downloaded, 2 already present" in again.stdout
    assert "downloaded in full" not in again.stdout and "hint:" not in again.stdout
