"""The real CNCF registry (``docker-registry serve``) for tests: plain HTTP, basic auth (bcrypt
htpasswd), TLS with a self-signed CA, or token auth with our token server. Each runs on a free
loopback port, is ready when ``/v2/`` answers, and is stopped by its PID.

    with run_registry(tmp_path, auth="basic", tls=True) as reg:
        reg.host, reg.url, reg.ca_file, reg.username, reg.password, reg.hosts_dir()
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stargz.hellobench.daemons import (
    REGISTRY_BIN,
    free_port,
    registry_config,
    spawn_registry,
    stop_process,
    wait_registry_ready,
)

__all__ = ["REGISTRY_BIN", "free_port", "stop_process"]
USERNAME, PASSWORD = "testuser", "testpass"
SERVICE, ISSUER = "test-registry", "test-issuer"
READY_TIMEOUT = 20.0
Auth = Literal["none", "basic", "token"]


def available() -> bool:
    return shutil.which(REGISTRY_BIN) is not None and shutil.which("openssl") is not None


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (it is its own CA): (cert, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


@dataclass
class RunningRegistry:
    host: str
    scheme: str
    workdir: Path
    process: subprocess.Popen[bytes]
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    token_realm: str | None = None  # http://127.0.0.1:PORT/token for auth="token"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def hosts_dir(self) -> Path:
        """A containerd-style hosts dir saying how to reach this registry (CA or plain HTTP)."""
        directory = self.workdir / "hosts.d"
        entry = directory / self.host
        entry.mkdir(parents=True, exist_ok=True)
        lines = [f'server = "{self.url}"']
        if self.ca_file is not None:
            lines.append(f'ca = "{self.ca_file}"')
        (entry / "hosts.toml").write_text("\n".join(lines) + "\n")
        if self.token_realm is not None:  # plain HTTP, so it may be sent the password
            realm_host = self.token_realm.split("/")[2]
            (directory / realm_host).mkdir(exist_ok=True)
            (directory / realm_host / "hosts.toml").write_text(
                f'server = "http://{realm_host}"\n')
        return directory

    def stop(self) -> None:
        for proc in [self.process, *self.helpers]:
            stop_process(proc)


def _start_token_server(workdir: Path) -> tuple[str, Path, subprocess.Popen[bytes]]:
    cert, key = make_cert(workdir, "token")
    port = free_port()
    script = Path(__file__).with_name("tokenserver.py")
    log = workdir / "tokenserver.out"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(key), str(cert), str(port),
             f"{USERNAME}:{PASSWORD}"],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "TOKENSERVER_LOG": str(workdir / "token-requests.log")})
    realm = f"http://127.0.0.1:{port}/token"
    try:
        _wait_until_listening(port, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return realm, cert, proc


def _wait_until_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"token server exited early: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError("token server did not start listening")


@contextlib.contextmanager
def run_registry(workdir: Path, *, auth: Auth = "none", tls: bool = False) -> Iterator[
        RunningRegistry]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = registry_config(workdir, port)
    http = config["http"]
    assert isinstance(http, dict)
    ca_file = None
    if tls:
        ca_file, key = make_cert(workdir, "registry")
        http["tls"] = {"certificate": str(ca_file), "key": str(key)}
    helpers: list[subprocess.Popen[bytes]] = []
    realm: str | None = None
    if auth == "basic":
        htpasswd = workdir / "htpasswd"
        result = subprocess.run(["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True,
                                capture_output=True)
        htpasswd.write_bytes(result.stdout)
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}
    elif auth == "token":
        realm, token_cert, token_proc = _start_token_server(workdir)
        helpers.append(token_proc)
        config["auth"] = {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER,
                                    "rootcertbundle": str(token_cert)}}
    proc = spawn_registry(workdir, config)
    scheme = "https" if tls else "http"
    username, password = (USERNAME, PASSWORD) if auth != "none" else (None, None)
    registry = RunningRegistry(f"127.0.0.1:{port}", scheme, workdir, proc, ca_file, username,
                               password, helpers=helpers, token_realm=realm)
    try:
        wait_registry_ready(f"{scheme}://127.0.0.1:{port}/v2/", proc, ca_file,
                            workdir / "registry.out")
        yield registry
    finally:
        registry.stop()


def token_requests(registry: RunningRegistry) -> list[str]:
    """What the token server was asked, one line per request ("POST password", "GET basic"...)."""
    path = registry.workdir / "token-requests.log"
    return path.read_text().splitlines() if path.exists() else []


_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                          r'(?P<bytes>\d+|-)')


def blob_bytes_served(registry: RunningRegistry) -> int:
    """Body bytes the registry sent for blob GETs so far, from its access log."""
    log = registry.workdir / "registry.out"
    total = 0
    for match in _ACCESS_LINE.finditer(log.read_text(errors="replace")):
        if match["method"] == "GET" and "/blobs/" in match["path"] and match["bytes"] != "-":
            total += int(match["bytes"])
    return total


def blob_requests(registry: RunningRegistry, digest: str) -> list[str]:
    """The methods of the requests the registry answered for blob ``digest``, in order."""
    log = (registry.workdir / "registry.out").read_text(errors="replace")
    return [match["method"] for match in _ACCESS_LINE.finditer(log)
            if match["path"].endswith(f"/blobs/{digest}")]
