"""Credentials stay with their registry: attacks by a hostile registry on loopback.

Each test runs real HTTP(S) servers on 127.0.0.1 (tests/support/fakeregistry.py) that log every
request, and checks what they received: a Basic challenge gets no other host's secret, a bearer
realm on another port gets the challenged registry's credentials only, an https->http redirect
on the same host:port and a redirect or upload location on another host carry no
Authorization, and nothing carries credentials over plain HTTP to a host not configured so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from stargz.errors import AuthError, StargzError
from stargz.registry import Credentials, CredentialStore, HostsConfig, Reference, RegistryClient
from stargz.registry.hosts import Endpoint
from stargz.registry.retry import RetryPolicy
from tests.support.fakeregistry import Answer, Certificate, FakeServer, Route, Seen

USER = "alice"
PASSWORD = "pw-for-the-right-registry"
OTHER_PASSWORD = "pw-meant-for-another-host"
BLOB = b"blob bytes the registry serves\n" * 8
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
FAST = RetryPolicy(max_retries=1, initial_backoff=0.001, max_backoff=0.005)
SECRETS = (PASSWORD, OTHER_PASSWORD)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


RIGHT = basic(USER, PASSWORD)
UNAUTHORIZED = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]}).encode()


def leaked(seen: list[Seen]) -> list[str]:
    """Every place a secret (plain or base64 in a Basic header) shows in what was received."""
    found = []
    for request in seen:
        text = json.dumps(request.headers) + request.body.decode(errors="replace") + request.path
        for secret in SECRETS:
            encoded = base64.b64encode(f"{USER}:{secret}".encode()).decode()
            if secret in text or encoded in text:
                found.append(f"{request.method} {request.scheme} {request.path}")
    return found


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host's credentials everywhere a user keeps them (env, Docker config)."""
    docker = tmp_path / "docker"
    docker.mkdir()
    auths = {"auths": {"other.example:5000": {"username": USER, "password": OTHER_PASSWORD}}}
    (docker / "config.json").write_text(json.dumps(auths))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.setenv("STARGZ_USERNAME", USER)
    monkeypatch.setenv("STARGZ_PASSWORD", OTHER_PASSWORD)
    monkeypatch.setenv("STARGZ_REGISTRY", "other.example:5000")


@pytest.fixture(name="cert", scope="module")
def cert_fixture(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate.create(tmp_path_factory.mktemp("tls"))


def blob_answer(seen: Seen) -> Answer:
    return Answer(200, {"Docker-Content-Digest": DIGEST}, BLOB)


def basic_registry(then: Route = blob_answer) -> Route:
    """Wants RIGHT as Basic credentials, then answers with ``then``."""
    def route(seen: Seen) -> Answer:
        if seen.authorization != RIGHT:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="fake"'}, UNAUTHORIZED)
        return then(seen)
    return route


def bearer_registry(realm: str, then: Route = blob_answer) -> Route:
    def route(seen: Seen) -> Answer:
        if not (seen.authorization or "").startswith("Bearer "):
            challenge = f'Bearer realm="{realm}",service="fake",scope="repository:r/a:pull"'
            return Answer(401, {"WWW-Authenticate": challenge}, UNAUTHORIZED)
        return then(seen)
    return route


def token_service(seen: Seen) -> Answer:
    token = "tok-user" if seen.method == "POST" or seen.authorization else "tok-anonymous"
    return Answer(200, {"Content-Type": "application/json"},
                  json.dumps({"token": token, "access_token": token}).encode())


def run(hosts: HostsConfig, creds: CredentialStore, body: Any) -> Any:
    async def main() -> Any:
        async with RegistryClient(hosts, creds, retry=FAST) as client:
            return await body(client)
    return asyncio.run(main())


def ref(server: FakeServer) -> Reference:
    return Reference.parse(f"{server.host}/r/a:v1")


def tls_hosts(tmp_path: Path, server: FakeServer, cert: Certificate) -> HostsConfig:
    entry = tmp_path / "hosts.d" / server.host
    entry.mkdir(parents=True)
    (entry / "hosts.toml").write_text(f'server = "https://{server.host}"\nca = "{cert.cert}"\n')
    return HostsConfig.create(tmp_path / "hosts.d")


# -- Basic challenges ---------------------------------------------------------------------------

def test_basic_challenge_gets_no_credentials_of_another_host() -> None:
    with FakeServer(basic_registry()) as registry:
        hosts = HostsConfig.create(insecure_hosts=[registry.host])
        # --user for another registry, the environment's and the Docker config's for another.
        others = CredentialStore.from_environment(
            {"127.0.0.1:1": Credentials(USER, OTHER_PASSWORD),
             "127.0.0.1": Credentials(USER, OTHER_PASSWORD)})
        with pytest.raises(AuthError, match="requires credentials"):
            run(hosts, others, lambda c: c.head_blob(ref(registry), DIGEST))
        assert registry.requests() and leaked(registry.requests()) == []
        assert all(s.authorization is None for s in registry.requests())
        # Its own credentials are sent (so the test above could have seen a leak).
        own = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        assert run(hosts, own, lambda c: c.head_blob(ref(registry), DIGEST)) == len(BLOB)
        assert registry.requests()[-1].authorization == RIGHT


# -- bearer realms ------------------------------------------------------------------------------

@pytest.mark.parametrize("whose", ["registry", "realm-host", "nobody"])
def test_bearer_realm_on_another_port_gets_only_the_registry_credentials(whose: str) -> None:
    with FakeServer(token_service) as realm, \
            FakeServer(bearer_registry(realm.url("http", "/token"))) as registry:
        given = {"registry": registry.host, "realm-host": realm.host, "nobody": None}[whose]
        creds = CredentialStore.from_environment(
            {given: Credentials(USER, PASSWORD)} if given else {})
        # Loopback is plain HTTP, as in the snapshotter: the realm may have credentials.
        hosts = HostsConfig.create(plain_http_localhost=True)
        assert run(hosts, creds, lambda c: c.head_blob(ref(registry), DIGEST)) == len(BLOB)
        [token_request] = realm.requests()
        if whose == "registry":
            form = parse_qs(token_request.body.decode())
            assert token_request.method == "POST"
            assert (form["username"], form["password"]) == ([USER], [PASSWORD])
            assert registry.requests()[-1].authorization == "Bearer tok-user"
        else:  # the realm's own host is not the challenged registry: anonymous
            assert token_request.method == "GET" and token_request.authorization is None
            assert leaked(realm.requests() + registry.requests()) == []
            assert registry.requests()[-1].authorization == "Bearer tok-anonymous"


@pytest.mark.parametrize("configured", [False, True])
def test_plain_http_realm_gets_no_password_unless_configured_plain(
        tmp_path: Path, cert: Certificate, configured: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    with FakeServer(token_service) as realm, \
            FakeServer(bearer_registry(realm.url("http", "/token")), tls=cert) as registry:
        hosts = tls_hosts(tmp_path, registry, cert)
        if configured:
            hosts = HostsConfig.create(tmp_path / "hosts.d", insecure_hosts=[realm.host])
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        assert run(hosts, creds, lambda c: c.head_blob(ref(registry), DIGEST)) == len(BLOB)
        [token_request] = realm.requests()
        assert all(s.scheme == "https" for s in registry.requests())
        if configured:
            assert parse_qs(token_request.body.decode())["password"] == [PASSWORD]
        else:
            assert token_request.method == "GET" and token_request.authorization is None
            assert leaked(realm.requests()) == []
            assert "not sending the credentials" in caplog.text
            assert PASSWORD not in caplog.text


# -- redirects ----------------------------------------------------------------------------------

def redirect_to(location: str) -> Route:
    def route(seen: Seen) -> Answer:
        if seen.path.startswith("/v2/r/a/blobs/") and seen.method == "GET":
            return Answer(307, {"Location": location})
        return blob_answer(seen)
    return route


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_https_to_http_redirect_on_the_same_port_drops_credentials(
        tmp_path: Path, cert: Certificate, auth: str) -> None:
    holder: list[FakeServer] = []

    def route(seen: Seen) -> Answer:
        registry = holder[0]
        if seen.scheme == "http":  # the downgraded storage URL, same host and port
            return blob_answer(seen)
        if seen.path == "/token":
            return token_service(seen)
        redirect = redirect_to(registry.url("http", "/storage/blob"))
        if auth == "basic":
            return basic_registry(redirect)(seen)
        return bearer_registry(registry.url("https", "/token"), redirect)(seen)

    with FakeServer(route, tls=cert) as registry:
        holder.append(registry)
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        hosts = tls_hosts(tmp_path, registry, cert)
        assert run(hosts, creds, lambda c: c.get_blob(ref(registry), DIGEST)) == BLOB
        plain = registry.requests("http")
        assert [s.path for s in plain] == ["/storage/blob"]
        assert plain[0].authorization is None and leaked(plain) == []
        # The https blob request did carry them: the redirect is what dropped them.
        [blob_get] = [s for s in registry.requests("https")
                      if s.path.startswith("/v2/r/a/blobs/") and s.authorization]
        assert blob_get.authorization in (RIGHT, "Bearer tok-user")


def test_redirect_to_another_host_drops_credentials() -> None:
    with FakeServer(blob_answer) as storage, \
            FakeServer(basic_registry(redirect_to("/unused"))) as registry:
        registry.route = basic_registry(redirect_to(storage.url("http", "/storage/blob")))
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        hosts = HostsConfig.create(plain_http_localhost=True)
        assert run(hosts, creds, lambda c: c.get_blob(ref(registry), DIGEST)) == BLOB
        assert [s.path for s in storage.requests()] == ["/storage/blob"]
        assert storage.requests()[0].authorization is None
        assert leaked(storage.requests()) == []


def test_a_401_from_the_redirect_target_steers_no_credentials() -> None:
    """Storage elsewhere answers 401 with its own bearer realm: that is no challenge of the
    registry, and the registry's credentials go to neither."""
    with FakeServer(token_service) as realm, \
            FakeServer(bearer_registry(realm.url("http", "/token"))) as storage, \
            FakeServer(basic_registry(redirect_to(storage.url("http", "/blob")))) as registry:
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        hosts = HostsConfig.create(plain_http_localhost=True)

        async def body(client: RegistryClient) -> bytes:
            # Learn the registry's Basic challenge first, so the blob GET carries credentials
            # from its first request and the storage's 401 comes to an authorized exchange.
            assert await client.head_blob(ref(registry), DIGEST) == len(BLOB)
            return await client.get_blob(ref(registry), DIGEST)

        with pytest.raises(StargzError):
            run(hosts, creds, body)
        assert storage.requests() and realm.requests() == []
        assert leaked(storage.requests()) == []


def test_upload_location_on_another_host_gets_no_credentials() -> None:
    def storage_route(seen: Seen) -> Answer:
        return Answer(201, {"Docker-Content-Digest": DIGEST})

    def registry_then(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return Answer(404)
        if seen.method == "POST":
            return Answer(202, {"Location": storage.url("http", "/upload/1")})
        return blob_answer(seen)

    with FakeServer(storage_route) as storage, \
            FakeServer(basic_registry(registry_then)) as registry:
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        hosts = HostsConfig.create(plain_http_localhost=True)
        assert run(hosts, creds, lambda c: c.push_blob(ref(registry), BLOB)) == DIGEST
        [put] = storage.requests()
        assert put.method == "PUT" and put.body == BLOB
        assert put.authorization is None and leaked([put]) == []
        assert any(s.method == "POST" and s.authorization == RIGHT for s in registry.requests())


# -- the one check every request passes ---------------------------------------------------------

@pytest.fixture(name="plain_server")
def plain_server_fixture() -> Iterator[FakeServer]:
    with FakeServer(blob_answer) as server:
        yield server


def test_no_request_carries_credentials_over_plain_http_to_an_unconfigured_host(
        plain_server: FakeServer) -> None:
    """Even a request made straight on the session's HTTP client, past the auth logic."""
    url = plain_server.url("http", "/anything")

    async def attempt(hosts: HostsConfig, **kwargs: Any) -> int:
        async with RegistryClient(hosts, retry=FAST) as client:
            endpoint = Endpoint("https", "tls.example", "/v2")
            response = await client._session.client(endpoint).request(url=url, **kwargs)
            return response.status_code

    attacks: list[dict[str, Any]] = [
        {"method": "GET", "headers": {"Authorization": RIGHT}},
        {"method": "GET", "headers": {"authorization": "Bearer tok-user"}},
        {"method": "POST", "data": {"grant_type": "password", "password": PASSWORD}},
        {"method": "POST", "data": {"grant_type": "refresh_token", "refresh_token": PASSWORD}},
    ]
    for attack in attacks:
        with pytest.raises(AuthError, match="over plain HTTP") as info:
            asyncio.run(attempt(HostsConfig.create(), **attack))
        assert PASSWORD not in str(info.value)
    assert plain_server.requests() == []
    # Anonymous requests go; credentials go to a host configured as plain HTTP.
    assert asyncio.run(attempt(HostsConfig.create(), method="GET")) == 200
    configured = HostsConfig.create(insecure_hosts=[plain_server.host])
    for attack in attacks:
        assert asyncio.run(attempt(configured, **attack)) == 200
    assert len(plain_server.requests()) == 1 + len(attacks)


def test_guard_sees_streamed_forms_as_secret() -> None:
    from stargz.registry.guard import carries_credentials

    async def body() -> Any:
        yield b"password=x"

    streamed = httpx.Request("POST", "http://h/", content=body(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert carries_credentials(streamed)
    anonymous = httpx.Request("POST", "http://h/", data={"service": "s", "scope": "x"})
    assert not carries_credentials(anonymous)


def test_no_warning_logged_without_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeServer(basic_registry()) as registry:
        creds = CredentialStore.from_environment({registry.host: Credentials(USER, PASSWORD)})
        hosts = HostsConfig.create(insecure_hosts=[registry.host])
        assert run(hosts, creds, lambda c: c.head_blob(ref(registry), DIGEST)) == len(BLOB)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert PASSWORD not in caplog.text
