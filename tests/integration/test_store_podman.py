"""`stargz store` under real podman 4.3.1 and buildah 1.28 (storage.conf
``additionallayerstores = ["MOUNTPOINT:ref"]``), the real registry behind a counting proxy.

- podman runs python3 from the debootstrap python3 eStargz image while the registry served a
  small part of its layer; a plain gzip image still runs (podman pulls it itself);
- removing the image releases its layers; a restarted store serves them again;
- credentials from ``--authfile`` and from podman's own auth.json against a basic-auth registry;
- buildah builds on the eStargz image through the store (from, run, commit, push) and the
  pushed image runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz.errors import RuntimeIntegrationError
from stargz.store.images import image_dirname
from tests.integration.test_mount_image import LAYER2_TEXT, build_images, push
from tests.integration.test_rpull_containerd import build_estargz_layout
from tests.support.faultproxy import FaultProxy
from tests.support.images import debian_python_rootfs_tar
from tests.support.podman import Podman
from tests.support.registry import PASSWORD, USERNAME, RunningRegistry, run_registry
from tests.support.store import StoreProcess

pytestmark = pytest.mark.integration

MOTD = b"hello from the stargz busybox test image\n"
RUN = ("run", "--rm", "--network", "none", "--tls-verify=false")


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="module", name="proxy")
def proxy_fixture(registry: RunningRegistry) -> Iterator[FaultProxy]:
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture(scope="module", name="busybox")
def busybox_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, str]:
    """``test/estargz:v1`` (busybox + a layer with /etc/layer2) and ``test/gzip:v1``."""
    return build_images(registry.host, tmp_path_factory.mktemp("busybox"))


@pytest.fixture(scope="module", name="python_image")
def python_image_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
                         ) -> tuple[str, int]:
    """The debootstrap python3 rootfs as one eStargz layer: (repository:tag, blob size)."""
    layout = tmp_path_factory.mktemp("python") / "oci"
    source = build_estargz_layout(layout, [debian_python_rootfs_tar()], "v1")
    blob_size = max(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    return push(source, registry.host, "test/python-estargz:v1"), blob_size


def quiet_config(work: Path) -> Path:
    """No background fetch: what the registry serves is then what the workload read."""
    config = work / "store.toml"
    config.write_text("[lazy]\nno_background_fetch = true\n")
    return config


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Iterator[StoreProcess]:
    store = StoreProcess(tmp_path / "store", tmp_path / "store-root", tmp_path / "store.log",
                         ["--config", str(quiet_config(tmp_path))])
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture(name="podman")
def podman_fixture(tmp_path: Path, store: StoreProcess) -> Iterator[Podman]:
    podman = Podman(tmp_path / "podman", layer_store=store.mountpoint)
    try:
        yield podman
    finally:
        podman.reset()


def blob_bytes(proxy: FaultProxy, digest: str = "") -> int:
    return proxy.bytes_served(f"/blobs/{digest}", method="GET")


def manifest_layers(ref: str) -> list[str]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True, text=True).stdout
    return [str(layer["digest"]) for layer in json.loads(out)["layers"]]


def held(store: StoreProcess) -> dict[str, int]:
    """What the store saved of podman's uses: layer digest -> uses."""
    path = store.root / "layers.json"
    doc = json.loads(path.read_text()) if path.exists() else {"layers": []}
    return {item["layer"]["digest"]: item["uses"] for item in doc["layers"]}


@pytest.mark.slow
def test_podman_runs_python3_while_the_registry_served_a_fraction(
        podman: Podman, store: StoreProcess, proxy: FaultProxy,
        python_image: tuple[str, int]) -> None:
    repository, blob_size = python_image
    image = f"{proxy.host}/{repository}"
    before = blob_bytes(proxy)
    started = time.monotonic()
    out = podman.podman(*RUN, image, "python3", "-c", 'print("hello")').stdout
    took = time.monotonic() - started
    assert out == "hello\n"
    fetched = blob_bytes(proxy) - before
    print(f"podman run python3 via stargz store: {took:.2f} s, registry served {fetched} "
          f"blob bytes of a {blob_size}-byte layer ({100 * fetched / blob_size:.1f} %)")
    assert fetched < blob_size // 5
    [layer] = manifest_layers(f"{proxy.host}/{repository}")
    assert f"layer {layer} of {image} served lazily" in store.log_text()


def test_a_plain_gzip_image_is_pulled_by_podman(podman: Podman, store: StoreProcess,
                                                proxy: FaultProxy,
                                                busybox: dict[str, str]) -> None:
    image = f"{proxy.host}/{busybox['gzip']}"
    layers = manifest_layers(image)
    out = podman.podman(*RUN, image, "cat", "/etc/motd", "/etc/layer2").stdout
    assert out.encode() == MOTD + LAYER2_TEXT
    assert all(blob_bytes(proxy, digest) > 0 for digest in layers)  # podman's own download
    assert all(f"layer {d} of {image} is not eStargz" in store.log_text() for d in layers)
    assert held(store) == {}


def test_removing_the_image_releases_its_layers(podman: Podman, store: StoreProcess,
                                                proxy: FaultProxy,
                                                busybox: dict[str, str]) -> None:
    image = f"{proxy.host}/{busybox['estargz']}"
    layers = manifest_layers(image)
    podman.podman("pull", "--tls-verify=false", image)
    assert held(store) == dict.fromkeys(layers, 1)
    assert podman.podman(*RUN, image, "cat", "/etc/layer2").stdout.encode() == LAYER2_TEXT
    directories = [store.mountpoint / image_dirname(image) / d for d in layers]
    assert all("diff" in os.listdir(d) for d in directories)
    podman.podman("rmi", image)
    assert held(store) == {}
    assert not any("diff" in os.listdir(d) for d in directories)  # let go of
    assert all(f"layer {d} of {image} released (0 left)" in store.log_text() for d in layers)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restarted_store_serves_podman_s_layers_again(podman: Podman, store: StoreProcess,
                                                        proxy: FaultProxy,
                                                        busybox: dict[str, str],
                                                        stop: str) -> None:
    image = f"{proxy.host}/{busybox['estargz']}"
    assert podman.podman(*RUN, image, "cat", "/etc/motd").stdout.encode() == MOTD
    if stop == "SIGTERM":
        assert store.stop() == 0
    else:  # its dead mount stays behind: podman refuses to work until the store is back
        assert store.proc is not None
        store.proc.kill()
        store.proc.wait()
        with pytest.raises(RuntimeIntegrationError, match="transport endpoint is not connected"):
            podman.podman("images")
    store.start()
    assert "restored 2 layers podman holds" in store.log_text()
    out = podman.podman(*RUN, image, "cat", "/etc/motd", "/etc/layer2").stdout
    assert out.encode() == MOTD + LAYER2_TEXT
    podman.podman("rmi", image)
    assert held(store) == {}


@pytest.fixture(scope="module", name="auth_registry")
def auth_registry_fixture(tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry,
                          busybox: dict[str, str]) -> Iterator[RunningRegistry]:
    """A basic-auth registry holding the busybox eStargz image."""
    with run_registry(tmp_path_factory.mktemp("auth-registry"), auth="basic") as private:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        "--dest-tls-verify=false", f"--dest-creds={USERNAME}:{PASSWORD}",
                        f"docker://{registry.host}/{busybox['estargz']}",
                        f"docker://{private.host}/private/estargz:v1"], check=True)
        yield private


@pytest.mark.parametrize("where", ["--authfile", "podman's default auth.json", "nowhere"])
def test_credentials_from_podman_s_auth_file(tmp_path: Path, auth_registry: RunningRegistry,
                                             where: str) -> None:
    """...and a store without them leaves the private image to podman, which runs it."""
    image = f"{auth_registry.host}/private/estargz:v1"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    authfile = tmp_path / "auth.json"
    if where == "--authfile":
        env, login, store_args = {}, ["--authfile", str(authfile)], ["--authfile", str(authfile)]
    elif where == "nowhere":  # podman's login is in a file the store is not told of
        env, login, store_args = {}, ["--authfile", str(authfile)], []
    else:  # podman login writes $XDG_RUNTIME_DIR/containers/auth.json; the store reads it
        env, login, store_args = {"XDG_RUNTIME_DIR": str(runtime)}, [], []
    store = StoreProcess(tmp_path / "store", tmp_path / "store-root", tmp_path / "store.log",
                         store_args, env)
    podman = Podman(tmp_path / "podman", layer_store=store.mountpoint, extra_env=env)
    store.mountpoint.mkdir()

    def podman_login() -> None:
        podman.podman("login", "--tls-verify=false", *login, "-u", USERNAME,
                      "--password-stdin", auth_registry.host, stdin=PASSWORD)

    if store_args:  # the store refuses to start without the file it is told to read
        podman_login()
    store.start()
    try:
        if not store_args:  # logged in after the store started: read when first needed
            podman_login()
        out = podman.podman(*RUN, *login, image, "cat", "/etc/layer2").stdout
        assert out.encode() == LAYER2_TEXT
        lazily = 0 if where == "nowhere" else 2
        assert store.log_text().count(f"of {image} served lazily") == lazily
        assert PASSWORD not in store.log_text()
    finally:
        podman.reset()
        store.stop()


@pytest.mark.slow
def test_buildah_builds_on_the_estargz_image_and_the_result_runs(
        podman: Podman, store: StoreProcess, proxy: FaultProxy, registry: RunningRegistry,
        python_image: tuple[str, int]) -> None:
    repository, blob_size = python_image
    base = f"{proxy.host}/{repository}"
    before = blob_bytes(proxy)
    container = podman.buildah("from", "--tls-verify=false", base).stdout.strip()
    after_from = blob_bytes(proxy) - before
    step = "printf 'print(\"built on eStargz\")\\n' > /app.py && python3 -m py_compile /app.py"
    podman.buildah("run", "--isolation", "chroot", container, "--", "sh", "-c", step)
    after_run = blob_bytes(proxy) - before
    built = f"{registry.host}/test/built:v1"
    podman.buildah("commit", container, built)
    podman.buildah("push", "--tls-verify=false", built)
    print(f"buildah from: {after_from} blob bytes, after the step: {after_run} "
          f"(base layer {blob_size} bytes)")
    assert after_run < blob_size // 5
    fresh = Podman(podman.workdir.parent / "fresh", layer_store=store.mountpoint)
    try:
        out = fresh.podman(*RUN, built, "sh", "-c", "python3 /app.py && ls /__pycache__").stdout
    finally:
        fresh.reset()
    assert out.startswith("built on eStargz\n")
    assert "app.cpython-311.pyc" in out
