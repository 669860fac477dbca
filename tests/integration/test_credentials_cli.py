"""Credentials through the command line and the daemons, attacked as the security review did.

- ``--user USER --password-stdin`` reaches the registries named on the command line only;
  ``--user USER:PASSWORD`` is refused by every command that takes it.
- ``stargz mount`` against the real basic-auth registry works, and the daemon's
  /proc/<pid>/cmdline and /proc/<pid>/environ hold no password (from stdin or the environment).
- The snapshotter started with STARGZ_USERNAME/STARGZ_PASSWORD but no STARGZ_REGISTRY never
  sends them to the registry an image names (a fake one on loopback that logs what it gets).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from stargz.containerd.labels import remote_labels
from stargz.estargz.writer import BuildOptions, build
from stargz.imagemount.state import MountState
from stargz.snapshotter.api import snapshots_pb2 as pb
from stargz.snapshotter.api import snapshots_pb2_grpc
from tests.support.containerd import REPO, wait_for_socket
from tests.support.fakeregistry import Answer, FakeServer, Seen
from tests.support.registry import RunningRegistry, run_registry

pytestmark = pytest.mark.integration

USER = "alice"
PASSWORD = "pw-of-the-named-registry-91f3"
OTHER_PASSWORD = "pw-of-another-registry-5c2e"
RIGHT = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
HELLO = b"served through the right credentials\n"
TIMEOUT_S = 90


def layer_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode, info.mtime = len(HELLO), 0o644, 1_700_000_000
        tar.addfile(info, io.BytesIO(HELLO))
    return out.getvalue()


class Layer:
    def __init__(self) -> None:
        blob = io.BytesIO()
        result = build(io.BytesIO(layer_tar()), blob, BuildOptions(chunk_size=1 << 16))
        self.blob = blob.getvalue()
        self.digest = "sha256:" + hashlib.sha256(self.blob).hexdigest()
        self.toc_digest = result.toc_digest
        self.diff_id = result.diff_id
        self.annotations = result.annotations()


@pytest.fixture(scope="module", name="layer")
def layer_fixture() -> Layer:
    return Layer()


def serve_ranges(blob: bytes, seen: Seen) -> Answer:
    spec = seen.headers.get("range", "")
    if seen.method == "HEAD" or not spec or "," in spec:  # no multi-range: the client copes
        return Answer(200, {}, blob)
    start, _, end = spec.removeprefix("bytes=").partition("-")
    first, last = int(start), min(int(end or len(blob) - 1), len(blob) - 1)
    return Answer(206, {"Content-Range": f"bytes {first}-{last}/{len(blob)}"},
                  blob[first:last + 1])


def basic_blob_registry(blob: bytes) -> FakeServer:
    def route(seen: Seen) -> Answer:
        if seen.authorization != RIGHT:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="fake"'})
        return serve_ranges(blob, seen)
    return FakeServer(route)


def no_secret_in(seen: list[Seen]) -> bool:
    text = json.dumps([s.headers for s in seen]) + "".join(s.body.decode() for s in seen)
    encoded = [base64.b64encode(f"{USER}:{p}".encode()).decode()
               for p in (PASSWORD, OTHER_PASSWORD)]
    return not any(secret in text for secret in (PASSWORD, OTHER_PASSWORD, *encoded))


def stargz(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stargz.cli.main", *args], input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          env=env, cwd=REPO)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No credentials from the caller's environment or Docker config, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARGZ_")}
    docker = tmp_path / "docker-empty"
    docker.mkdir(exist_ok=True)
    return {**env, "DOCKER_CONFIG": str(docker), **extra}


# -- the command line ---------------------------------------------------------------------------

def test_user_and_password_stdin_reach_the_named_registry(tmp_path: Path, layer: Layer) -> None:
    with basic_blob_registry(layer.blob) as registry:
        done = stargz("get-toc-digest", "--plain-http", "--user", USER, "--password-stdin",
                      f"{registry.host}/r/a:v1", layer.digest, stdin=PASSWORD + "\n",
                      env=clean_env(tmp_path))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == layer.toc_digest
        authorized = [s.authorization for s in registry.requests() if s.authorization]
        assert authorized and set(authorized) == {RIGHT}
        assert PASSWORD not in done.stderr + done.stdout


def test_user_on_a_terminal_is_asked_for_the_password(tmp_path: Path, layer: Layer) -> None:
    with basic_blob_registry(layer.blob) as registry:
        pid, terminal = pty.fork()
        if pid == 0:  # the child: stargz on a terminal of its own
            try:
                os.chdir(REPO)
                os.execve(sys.executable, [
                    sys.executable, "-m", "stargz.cli.main", "get-toc-digest", "--plain-http",
                    "--user", USER, f"{registry.host}/r/a:v1", layer.digest], clean_env(tmp_path))
            finally:
                os._exit(127)
        output = read_terminal(terminal, until=b"Password for alice: ")
        os.write(terminal, PASSWORD.encode() + b"\n")
        output += read_terminal(terminal, until=None)
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert layer.toc_digest.encode() in output and PASSWORD.encode() not in output  # no echo
    assert RIGHT in {s.authorization for s in registry.requests()}


def read_terminal(terminal: int, until: bytes | None) -> bytes:
    """What the terminal shows, up to ``until`` (None: until the program closes it)."""
    seen = b""
    while until is None or until not in seen:
        ready, _, _ = select.select([terminal], [], [], TIMEOUT_S)
        assert ready, f"the terminal went quiet after {seen!r}"
        try:
            data = os.read(terminal, 4096)
        except OSError:  # EIO: the other side is closed
            data = b""
        if not data:
            assert until is None, f"the terminal closed after {seen!r}"
            return seen
        seen += data
    return seen


@pytest.mark.parametrize("command", [
    ["get-toc-digest", "h.example/r/a:v1", "sha256:" + "0" * 64],
    ["convert", "h.example/r/a:v1", "h.example/r/a:esgz"],
    ["rpull", "h.example/r/a:v1"],
    ["mount", "h.example/r/a:v1", "/nonexistent-mnt"],
])
def test_password_in_arguments_is_refused(command: list[str]) -> None:
    done = stargz(*command[:1], "--user", f"{USER}:{PASSWORD}", *command[1:])
    assert done.returncode == 2 and PASSWORD not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"stargz {command[0]}: error: argument --user: ")
    assert "--password-stdin" in error


def test_user_without_password_source_is_one_clear_error(tmp_path: Path) -> None:
    done = stargz("get-toc-digest", "--user", USER, "h.example/r/a:v1", "sha256:" + "0" * 64,
                  stdin="", env=clean_env(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == ("stargz: error: --user needs --password-stdin when stdin "
                                   "is not a terminal")


@pytest.mark.parametrize("scoped", [True, False])
def test_environment_credentials_of_another_registry_are_not_sent(
        tmp_path: Path, layer: Layer, scoped: bool) -> None:
    extra = {"STARGZ_USERNAME": USER, "STARGZ_PASSWORD": OTHER_PASSWORD}
    if scoped:
        extra["STARGZ_REGISTRY"] = "other.example:5000"
    with basic_blob_registry(layer.blob) as registry:
        done = stargz("get-toc-digest", "--plain-http", f"{registry.host}/r/a:v1",
                      layer.digest, env=clean_env(tmp_path, **extra))
        assert done.returncode == 1
        assert "requires credentials" in done.stderr
        assert registry.requests() and no_secret_in(registry.requests())
        assert all(s.authorization is None for s in registry.requests())
    warned = "STARGZ_USERNAME/STARGZ_PASSWORD are ignored: set STARGZ_REGISTRY" in done.stderr
    assert warned is not scoped
    assert OTHER_PASSWORD not in done.stderr


# -- stargz mount -------------------------------------------------------------------------------

def put_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def push_image(registry: RunningRegistry, layer: Layer, work: Path, name: str) -> str:
    """A one-layer eStargz image, pushed with the registry's credentials by skopeo."""
    layout = work / "layout"
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **put_blob(layout, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **put_blob(layout, layer.blob), "annotations": layer.annotations}],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **put_blob(layout, manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    image = f"{registry.host}/{name}:v1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"--dest-creds={registry.username}:{registry.password}",
                    f"oci:{layout}:v1", f"docker://{image}"], check=True, timeout=TIMEOUT_S)
    return image


@pytest.fixture(scope="module", name="basic_registry")
def basic_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("basic"), auth="basic") as registry:
        yield registry


def proc_text(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


@pytest.mark.parametrize("source", ["password-stdin", "environment"])
def test_mount_daemon_holds_no_password_in_its_proc_entries(
        tmp_path: Path, layer: Layer, basic_registry: RunningRegistry, source: str) -> None:
    registry = basic_registry
    password = str(registry.password)
    image = push_image(registry, layer, tmp_path, f"private/{source}")
    mountpoint, state_root = tmp_path / "mnt", tmp_path / "state"
    mountpoint.mkdir()
    if source == "password-stdin":
        env = clean_env(tmp_path)
        args = ["--user", str(registry.username), "--password-stdin"]
        stdin = password + "\n"
    else:
        env = clean_env(tmp_path, STARGZ_USERNAME=str(registry.username),
                        STARGZ_PASSWORD=password, STARGZ_REGISTRY=registry.host)
        args, stdin = [], None
    state = MountState.of(mountpoint, state_root)
    try:
        done = stargz("mount", "--plain-http", "--state-dir", str(state_root), *args, image,
                      str(mountpoint), stdin=stdin, env=env)
        assert done.returncode == 0, done.stderr
        pid = state.daemon_pid()
        assert pid is not None
        # Read after the mount: the daemon fetched the chunk with the credentials it holds.
        assert (mountpoint / "hello.txt").read_bytes() == HELLO
        cmdline, environ = proc_text(pid, "cmdline"), proc_text(pid, "environ")
        assert b"--state-dir" in cmdline and b"DOCKER_CONFIG=" in environ  # the right process
        for text in (cmdline, environ, state.log_file.read_bytes()):
            assert password.encode() not in text
        assert b"STARGZ_PASSWORD=" not in environ
    finally:
        stargz("umount", "--state-dir", str(state_root), str(mountpoint))


# -- the snapshotter ----------------------------------------------------------------------------

def prepare_remote_layer(sock: Path, image: str, layer: Layer) -> None:
    labels = remote_labels(image, "sha256:" + "1" * 64, layer.digest, [layer.digest],
                           layer.toc_digest)

    async def call() -> None:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)
            try:
                await stub.Prepare(pb.PrepareSnapshotRequest(key="extract-1", labels=labels))
            except grpc.aio.AioRpcError as err:  # ALREADY_EXISTS: mounted lazily
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()

    asyncio.run(call())


@pytest.mark.parametrize("scoped", [False, True])
def test_snapshotter_sends_environment_credentials_only_to_stargz_registry(
        tmp_path: Path, layer: Layer, scoped: bool) -> None:
    with basic_blob_registry(layer.blob) as registry:
        extra = {"STARGZ_USERNAME": USER, "STARGZ_PASSWORD": PASSWORD}
        if scoped:  # the control: the same setup with the host named does send them
            extra["STARGZ_REGISTRY"] = registry.host
        sock, log = tmp_path / "stargz.sock", tmp_path / "snapshotter.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stargz.snapshotter.daemon", "--address", str(sock),
                 "--root", str(tmp_path / "root")],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=clean_env(tmp_path, **extra))
        try:
            wait_for_socket(sock, proc, "snapshotter")
            prepare_remote_layer(sock, f"{registry.host}/r/a:v1", layer)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=TIMEOUT_S)
        seen = registry.requests()
    assert seen, "the snapshotter never asked the registry"
    text = log.read_text(errors="replace")
    assert PASSWORD not in text
    if scoped:
        assert RIGHT in {s.authorization for s in seen}
    else:
        assert all(s.authorization is None for s in seen) and no_secret_in(seen)
        assert "STARGZ_USERNAME/STARGZ_PASSWORD are ignored: set STARGZ_REGISTRY" in text
