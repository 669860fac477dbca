"""A hostile registry for credential tests: a small http.server on loopback that logs every
request it receives (scheme, method, path, headers, body) and answers with a route function.

Given a certificate it speaks TLS and plain HTTP on the same port (the first byte of a
connection tells a TLS handshake apart), so that it can redirect https -> http on one host:port.

    with FakeServer(route, tls=cert) as fake:     # route(seen) -> Answer
        fake.host, fake.url("https", "/v2/"), fake.seen
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingTCPServer
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_HANDSHAKE = b"\x16"


@dataclass(frozen=True)
class Seen:
    scheme: str
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Route = Callable[[Seen], Answer]


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 that is its own CA."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(key, hashes.SHA256()))
        found = cls(directory / "fake-cert.pem", directory / "fake-key.pem")
        found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        found.key.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return found


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        seen = Seen(scheme, self.command, self.path,
                    {k.lower(): v for k, v in self.headers.items()}, body)
        with self.server.lock:
            self.server.seen.append(seen)
        answer = self.server.route(seen)
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class FakeServer(ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, route: Route, tls: Certificate | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.route = route
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(tls.cert, tls.key)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.host}{path}"

    def requests(self, scheme: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if scheme is None or s.scheme == scheme]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self._tls is None or request.recv(1, socket.MSG_PEEK) != TLS_HANDSHAKE:
            super().finish_request(request, client_address)
            return
        try:
            wrapped = self._tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that refused our certificate
        with wrapped:  # it owns the connection now
            super().finish_request(wrapped, client_address)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
