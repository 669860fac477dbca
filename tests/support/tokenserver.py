"""A small Docker registry token server for tests (RS256 JWTs with the signing cert in ``x5c``).

Answers GET (docker style: optional Basic credentials, ``scope`` query parameters) and POST
(containerd's OAuth2 form: ``grant_type=password``). Wrong credentials get 401; no credentials get
an anonymous token. Run as a script: ``tokenserver.py KEY.pem CERT.pem PORT [USER:PASS ...]``.
Every request is appended to ``$TOKENSERVER_LOG`` (method and grant type only) when it is set.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ISSUER = "test-issuer"
LIFETIME = 300


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate, users: dict[str, str]):
        self.key = key
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.users = users

    def token(self, subject: str, service: str, scopes: list[str]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        access = []
        for scope in scopes:  # repository:name:pull,push
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": service, "exp": now + LIFETIME,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(
            json.dumps(claims).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def allowed(self, user: str, password: str) -> bool:
        return self.users.get(user) == password


def make_handler(issuer: TokenIssuer, log_path: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def _record(self, line: str) -> None:
            if log_path:
                with open(log_path, "a") as log:
                    log.write(line + "\n")

        def _answer(self, status: int, body: dict[str, object] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            header = self.headers.get("Authorization", "")
            user = ""
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if not issuer.allowed(user, password):
                    self._record("GET denied")
                    return self._answer(401, {"details": "bad credentials"})
            self._record("GET basic" if user else "GET anonymous")
            token = issuer.token(user, query.get("service", [""])[0], query.get("scope", []))
            self._answer(200, {"token": token, "access_token": token, "expires_in": LIFETIME})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = parse_qs(self.rfile.read(length).decode())
            grant = form.get("grant_type", [""])[0]
            user, password = form.get("username", [""])[0], form.get("password", [""])[0]
            if grant != "password" or not issuer.allowed(user, password):
                self._record(f"POST {grant} denied")
                return self._answer(401, {"error": "invalid_grant"})
            self._record(f"POST {grant}")
            scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
            token = issuer.token(user, form.get("service", [""])[0], scopes)
            self._answer(200, {"access_token": token, "expires_in": LIFETIME})

    return Handler


def main(argv: list[str]) -> None:
    key_path, cert_path, port = argv[0], argv[1], int(argv[2])
    users = dict(u.split(":", 1) for u in argv[3:]) or {"testuser": "testpass"}
    with open(key_path, "rb") as key_file:
        key = serialization.load_pem_private_key(key_file.read(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    with open(cert_path, "rb") as cert_file:
        cert = x509.load_pem_x509_certificate(cert_file.read())
    handler = make_handler(TokenIssuer(key, cert, users), os.environ.get("TOKENSERVER_LOG"))
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
