"""The daemons a HelloBench sample runs on: the registry (docker-registry), containerd with the
``stargz`` proxy snapshotter plugin, our snapshotter and the Go stargzd. Each runs in a directory
of its own and is stopped by its own PID; ``cold_reset`` is what happens between samples.
podman and the additional layer stores are in ``daemons_podman``.

    with run_registry(work / "registry") as registry:        # registry.host = 127.0.0.1:PORT
        snap = SnapshotterProcess(work / "snap.sock", work / "snap-root", work / "snap.log")
        snap.start()                                          # before containerd (RECIPES.md)
        ctd = Containerd(work / "containerd", snap.address); ctd.start()
        ctd.ctr("images", "pull", "--plain-http", ref)
        ctd.stop(); snap.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import stargz
from stargz.errors import RuntimeIntegrationError

# where this process's stargz package is imported from: its daemons import the same code
SOURCE_ROOT = Path(stargz.__file__).resolve().parents[1]
DEFAULT_PEERS = Path(os.environ.get("STARGZ_PEERS", "/tmp/peers"))  # build.sh's output
PROXY_NAME = "stargz"  # the proxy plugin name: ctr ... --snapshotter stargz
REGISTRY_BIN = "docker-registry"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
OUTPUT_TAIL = 800  # characters of a failed command's output kept in its error


def stop_process(proc: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM this process (by its PID), SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(STOP_TIMEOUT_S)


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], what: str,
                    poll_s: float = 0.05) -> None:
    """Until something accepts connections on the unix socket, or the process died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeIntegrationError(f"{what} exited with {proc.returncode} before "
                                          "listening")
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(path))
                return
            except OSError:
                time.sleep(poll_s)
    raise RuntimeIntegrationError(f"{what} did not listen on {path} within {START_TIMEOUT_S} s")


class ReadinessListener:
    """systemd's side of sd_notify for a daemon we start: a datagram socket whose path goes
    in the child's ``$NOTIFY_SOCKET``; :meth:`wait_ready` returns at its ``READY=1``, as a
    ``Type=notify`` unit is started then (and the units ordered after it, containerd, start)."""

    def __init__(self) -> None:
        # a short directory of its own: unix socket paths fit in 108 bytes
        self.path = Path(tempfile.mkdtemp(prefix="notify-")) / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(self.path))

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def wait_ready(self, proc: subprocess.Popen[bytes], what: str,
                   poll_s: float = 0.05) -> None:
        """Until the child sends READY=1, or it died (RuntimeIntegrationError)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeIntegrationError(f"{what} exited with {proc.returncode} before "
                                              "it was ready")
            ready, _, _ = select.select([self._sock], [], [], poll_s)
            if ready and b"READY=1" in self._sock.recv(4096).split(b"\n"):
                return
        raise RuntimeIntegrationError(f"{what} did not say READY=1 within {START_TIMEOUT_S} s")

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)
        self.path.parent.rmdir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def detach_mounts_under(path: Path) -> None:
    """Lazily unmount what a killed daemon may have left (deepest first), so rmtree is safe."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def drop_page_cache() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: no sample reads another's cached pages."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def python_env(pythonpath: Sequence[str] = (str(SOURCE_ROOT),)) -> dict[str, str]:
    """This environment, with ``pythonpath`` where a Python child imports from."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}


def command_failed(argv: Sequence[str], code: int, output: str) -> RuntimeIntegrationError:
    """One line: the command, its exit status and the end of what it said."""
    said = " ".join(output.split())
    return RuntimeIntegrationError(f"{' '.join(argv)} exited {code}: {said[-OUTPUT_TAIL:]}")


class Daemon:
    """A process this module started (``proc``), writing ``log``; stopped by its PID."""

    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _wait_ready(self, listener: ReadinessListener, what: str) -> None:
        """Until the daemon's READY=1; if it never comes, the daemon is stopped."""
        assert self.proc is not None
        try:
            listener.wait_ready(self.proc, what)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, address: Path, what: str) -> None:
        """Until ``address`` accepts connections; if it never does, the daemon is stopped and
        the error ends with the last line of its log (why it did not start)."""
        assert self.proc is not None
        try:
            wait_for_socket(address, self.proc, what)
        except RuntimeIntegrationError as err:
            self.stop()
            lines = self.log_text().strip().splitlines() or [""]
            raise RuntimeIntegrationError(f"{err}: {lines[-1][-OUTPUT_TAIL:]}") from None
        except BaseException:
            self.stop()
            raise


# --- the registry ---------------------------------------------------------------------------

@dataclass
class Registry:
    """A running docker-registry: plain HTTP on 127.0.0.1 unless ``tls`` was asked."""

    host: str
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.workdir / "registry.out"  # its access log too

    def stop(self) -> None:
        stop_process(self.process)


def registry_config(workdir: Path, port: int) -> dict[str, object]:
    """docker-registry's config: filesystem storage under ``workdir``, deletes allowed."""
    return {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "stargz-bench"},
    }


def spawn_registry(workdir: Path, config: dict[str, object]) -> subprocess.Popen[bytes]:
    """``docker-registry serve`` on ``config``, its output (and access log) in registry.out."""
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    with (workdir / "registry.out").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([REGISTRY_BIN, "serve", str(config_path)], stdout=log,
                                stderr=subprocess.STDOUT)


def wait_registry_ready(url: str, proc: subprocess.Popen[bytes], ca_file: Path | None,
                        log: Path) -> None:
    """Until ``url`` (its /v2/) answers, 401 included."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-300:].replace("\n", " ")
            raise RuntimeIntegrationError(f"{url} exited early: {tail}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except urllib.error.HTTPError as err:
            err.close()  # it holds the response's socket
            if err.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeIntegrationError(f"{url} did not answer within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def run_registry(workdir: Path) -> Iterator[Registry]:
    """A plain-HTTP registry on a free loopback port, stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    registry = Registry(f"127.0.0.1:{port}", workdir,
                        spawn_registry(workdir, registry_config(workdir, port)))
    try:
        wait_registry_ready(f"http://{registry.host}/v2/", registry.process, None, registry.log)
        yield registry
    finally:
        registry.stop()


# --- containerd and the snapshotters --------------------------------------------------------

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
[proxy_plugins]
  [proxy_plugins.{name}]
    type = "snapshot"
    address = "{snapshotter}"
"""


class SnapshotterProcess(Daemon):
    """``python -m <module> --address A --root R`` (our daemon, or a test launcher like it).
    ``pythonpath``: where the child imports from (subclasses add a checkout)."""

    pythonpath: tuple[str, ...] = (str(SOURCE_ROOT),)

    def __init__(self, address: Path, root: Path, log: Path,
                 module: str = "stargz.snapshotter.daemon", extra_args: Sequence[str] = (),
                 log_level: str = "debug", wait_ready: bool = False) -> None:
        self.address, self.root, self.log = address, root, log
        self.module, self.extra_args = module, list(extra_args)
        self.log_level = log_level
        self.wait_ready = wait_ready  # start() returns at its READY=1, as systemd's Type=notify
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--address", str(self.address), "--root",
                str(self.root), "--log-level", self.log_level, *self.extra_args]

    def start(self) -> None:
        listener = ReadinessListener() if self.wait_ready else None
        env = python_env(self.pythonpath) | (listener.env() if listener else {})
        try:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log,
                                             stderr=subprocess.STDOUT, env=env)
            self._wait_listening(self.address, "snapshotter")
            if listener is not None:
                self._wait_ready(listener, "snapshotter")
        finally:
            if listener is not None:
                listener.close()

class GoSnapshotterProcess(SnapshotterProcess):
    """The Go reference's snapshotter: ``stargzd -address A -root R`` (peers' build.sh)."""

    def __init__(self, binary: Path, address: Path, root: Path, log: Path,
                 config: Path | None = None, log_level: str = "info") -> None:
        super().__init__(address, root, log, log_level=log_level)
        self.binary, self.config = binary, config

    def command(self) -> list[str]:
        argv = [str(self.binary), "-address", str(self.address), "-root", str(self.root),
                "-log-level", self.log_level]
        return argv + (["-config", str(self.config)] if self.config else [])


class Containerd(Daemon):
    """containerd with a snapshotter registered as proxy plugin ``stargz``."""

    def __init__(self, workdir: Path, snapshotter_address: Path, extra_config: str = "",
                 address: Path | None = None) -> None:
        self.workdir = workdir
        self.extra_config = extra_config
        # a unix socket path must fit in 108 bytes: a deep workdir needs ``address`` elsewhere
        self.address = address or workdir / "containerd.sock"
        self.snapshotter_address = snapshotter_address
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "containerd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(
            root=self.workdir / "root", state=self.workdir / "state", address=self.address,
            name=PROXY_NAME, snapshotter=self.snapshotter_address) + self.extra_config)
        return config

    def start(self) -> None:
        config = self.write_config()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        self._wait_listening(self.address, "containerd")

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERD_ADDRESS": str(self.address),
                "CONTAINERD_NAMESPACE": "default"}

    def ctr(self, *args: str, tool: str = "ctr", check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` (or ``ctr-remote``) against this containerd; raise with its output."""
        result = subprocess.run([tool, *args], env=self.env(), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise command_failed([tool, *args], result.returncode, result.stdout + result.stderr)
        return result

    def ctr_retry(self, *args: str, tool: str = "ctr", attempts_s: float = 30) -> str:
        """Retry while containerd reconnects to a restarted snapshotter (its gRPC backoff)."""
        deadline = time.monotonic() + attempts_s
        while True:
            result = self.ctr(*args, tool=tool, check=False)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                raise command_failed([tool, *args], result.returncode, result.stderr)
            time.sleep(0.5)
