"""RegistryClient against an in-process fake registry (httpx.MockTransport) for the edge cases a
real registry will not produce on demand: redirects that expire, refused multi-range, 429s,
wrong Content-Range, mirrors that fail, token services. The real registry is in tests/integration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from stargz.errors import (
    AuthError,
    NotFoundError,
    RangeError,
    TransportError,
    VerificationError,
)
from stargz.registry import (
    Credentials,
    CredentialStore,
    HostsConfig,
    Platform,
    Reference,
    RegistryClient,
    RetryPolicy,
)
from stargz.registry.manifest import DOCKER_MANIFEST_LIST, OCI_MANIFEST

SECRET = "very-secret-pw"
REF = Reference.parse("reg.example/team/app:v1")
DATA = bytes(range(256)) * 64  # 16 KiB
DATA_DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
FAST = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.005)
Fault = Callable[[httpx.Request], httpx.Response | None]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FailingStream(httpx.AsyncByteStream):
    """Sends part of a body, then the connection breaks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


class FakeRegistry:
    def __init__(self, *, multirange: str = "multipart", redirect: bool = False,
                 auth: str | None = None, suffix_ranges: bool = True) -> None:
        self.multirange = multirange
        self.suffix_ranges = suffix_ranges  # False: a suffix range gets the whole blob
        self.redirect = redirect
        self.auth = auth
        self.blobs: dict[str, bytes] = {DATA_DIGEST: DATA}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.log: list[httpx.Request] = []
        self.faults: list[Fault] = []  # each answers once (None: pass through)
        self.expired: set[str] = set()
        self.post_token_status = 200

    def add_manifest(self, raw: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha(raw)
        self.manifests[digest] = (raw, media_type)
        if tag:
            self.manifests[tag] = (raw, media_type)
        return digest

    def requests(self, host: str = "reg.example", method: str | None = None) -> list[httpx.Request]:
        return [r for r in self.log if r.url.host == host and (method is None or
                                                               r.method == method)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.log.append(request)
        while self.faults:
            answer = self.faults.pop(0)(request)
            if answer is not None:
                return answer
            break
        if request.url.host == "auth.example":
            return self._token(request)
        if request.url.host == "storage.example":
            if str(request.url) in self.expired:
                return httpx.Response(403, text="<Error>Request has expired</Error>")
            return serve_bytes(self.blobs[request.url.path.rsplit("/", 1)[1]],
                               request.headers.get("range"), self.multirange, self.suffix_ranges)
        denied = self._check_auth(request)
        return denied or self._api(request)

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if self.auth == "basic" and header != Credentials("alice", SECRET).basic_header():
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer" and not header.startswith("Bearer good-"):
            repo = request.url.path.split("/")[2:4]
            scope = f"repository:{'/'.join(repo)}:pull"
            challenge = (f'Bearer realm="https://auth.example/token",service="reg",'
                         f'scope="{scope}"')
            return httpx.Response(401, headers={"WWW-Authenticate": challenge},
                                  json={"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            if self.post_token_status != 200:
                return httpx.Response(self.post_token_status)
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            ok = form.get("grant_type") == "password" and form.get("password") == SECRET
        else:
            header = request.headers.get("authorization")
            ok = header is None or header == Credentials("alice", SECRET).basic_header()
        if not ok:
            return httpx.Response(401, json={"details": "bad credentials"})
        return httpx.Response(200, json={"token": f"good-{uuid.uuid4().hex}", "expires_in": 300})

    def _api(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")  # "", "v2", team, app, kind, name...
        kind, name = parts[4], "/".join(parts[5:])
        if kind == "manifests":
            return self._manifest(request, name)
        if kind == "blobs" and name.startswith("uploads"):
            return self._upload(request, name)
        if name not in self.blobs:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN",
                                                         "message": "blob unknown"}]})
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(self.blobs[name]))})
        if self.redirect:
            target = f"https://storage.example/blob/{name}?sig={uuid.uuid4().hex}"
            return httpx.Response(307, headers={"Location": target})
        return serve_bytes(self.blobs[name], request.headers.get("range"), self.multirange,
                           self.suffix_ranges)

    def _manifest(self, request: httpx.Request, name: str) -> httpx.Response:
        if request.method == "PUT":
            digest = self.add_manifest(request.content, request.headers["content-type"], name)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        if name not in self.manifests:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                         "message": "manifest unknown"}]})
        raw, media_type = self.manifests[name]
        return httpx.Response(200, content=raw, headers={"Content-Type": media_type})

    def _upload(self, request: httpx.Request, name: str) -> httpx.Response:
        repo = "/".join(request.url.path.split("/")[2:4])
        if request.method == "POST":
            if request.url.params.get("mount") in self.blobs:
                return httpx.Response(201)
            session = uuid.uuid4().hex
            self.uploads[session] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{session}"})
        session = name.split("/", 1)[1]
        if request.method == "DELETE":
            del self.uploads[session]
            return httpx.Response(204)
        self.uploads[session] += request.content
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{session}"})
        data = bytes(self.uploads.pop(session))
        if sha(data) != request.url.params["digest"]:
            return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID",
                                                         "message": "digest mismatch"}]})
        self.blobs[sha(data)] = data
        return httpx.Response(201, headers={"Docker-Content-Digest": sha(data)})


def serve_bytes(data: bytes, header: str | None, multirange: str,
                suffix: bool = True) -> httpx.Response:
    if header is None or (header.startswith("bytes=-") and not suffix):
        return httpx.Response(200, content=data, headers={"Content-Length": str(len(data))})
    if header.startswith("bytes=-"):  # the last N bytes
        start = max(0, len(data) - int(header.removeprefix("bytes=-")))
        return httpx.Response(206, content=data[start:], headers={
            "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
    ranges = [(int(a), int(b or len(data) - 1) + 1) for a, b in
              (r.split("-") for r in header.removeprefix("bytes=").split(","))]
    unsatisfiable = {"Content-Range": f"bytes */{len(data)}"}
    if any(end > len(data) for _, end in ranges):
        return httpx.Response(416, headers=unsatisfiable)
    if len(ranges) == 1 or multirange == "merge":
        start, end = ranges[0][0], ranges[-1][1]
        return httpx.Response(206, content=data[start:end], headers={
            "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})
    if multirange == "full":
        return httpx.Response(200, content=data)
    if multirange in ("400", "416"):
        return httpx.Response(int(multirange), headers=unsatisfiable)
    body = b""
    for start, end in ranges:
        body += (f"--XX\r\nContent-Range: bytes {start}-{end - 1}/{len(data)}\r\n\r\n"
                 .encode() + data[start:end] + b"\r\n")
    return httpx.Response(206, content=body + b"--XX--\r\n",
                          headers={"Content-Type": "multipart/byteranges; boundary=XX"})


def client_for(fake: FakeRegistry, creds: CredentialStore | None = None,
               hosts: HostsConfig | None = None, retry: RetryPolicy = FAST) -> RegistryClient:
    return RegistryClient(hosts, creds, transport=httpx.MockTransport(fake), retry=retry)


def run(fake: FakeRegistry, body: Callable[[RegistryClient], Any], **kwargs: Any) -> Any:
    async def main() -> Any:
        async with client_for(fake, **kwargs) as client:
            return await body(client)

    return asyncio.run(main())


RANGES = [(0, 10), (100, 200), (16000, 16384)]
EXPECTED = [DATA[a:b] for a, b in RANGES]


# -- manifests ---------------------------------------------------------------------------------

def test_manifest_by_tag_digest_and_platform() -> None:
    fake = FakeRegistry()
    amd = fake.add_manifest(b'{"schemaVersion":2,"layers":[],"config":{}, "x":1}', OCI_MANIFEST)
    arm = fake.add_manifest(b'{"schemaVersion":2,"layers":[],"config":{}, "x":2}', OCI_MANIFEST)
    index = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": arm, "size": 1,
         "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    index_digest = fake.add_manifest(index, DOCKER_MANIFEST_LIST, "v1")

    async def body(client: RegistryClient) -> None:
        top = await client.fetch_manifest(REF)
        assert (top.raw, top.digest, top.is_index) == (index, index_digest, True)
        amd64 = await client.get_manifest(REF, Platform("linux", "amd64"))
        assert amd64.digest == amd and amd64.media_type == OCI_MANIFEST
        arm64 = await client.get_manifest(REF, Platform.parse("linux/arm64/v8"))
        assert arm64.digest == arm
        with pytest.raises(NotFoundError, match="has: linux/amd64, linux/arm64"):
            await client.get_manifest(REF, Platform("linux", "s390x"))
        with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN"):
            await client.get_manifest(REF.with_tag("nope"))

    run(fake, body)


def test_manifest_digest_is_verified() -> None:
    fake = FakeRegistry()
    wanted = fake.add_manifest(b'{"schemaVersion":2}', OCI_MANIFEST)
    fake.manifests[wanted] = (b'{"schemaVersion":2, "evil":1}', OCI_MANIFEST)

    async def body(client: RegistryClient) -> None:
        with pytest.raises(VerificationError, match="expected " + wanted):
            await client.fetch_manifest(REF.with_digest(wanted))

    run(fake, body)


# -- ranges ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["multipart", "merge"])
def test_multi_range_in_one_request(mode: str) -> None:
    fake = FakeRegistry(multirange=mode)
    ranges = RANGES if mode == "multipart" else [(0, 10), (5, 20), (30, 40)]
    got = run(fake, lambda c: c.read_blob_ranges(REF, DATA_DIGEST, ranges))
    assert got == [DATA[a:b] for a, b in ranges]
    assert len(fake.requests(method="GET")) == 1


@pytest.mark.parametrize("mode", ["full", "400", "416"])
def test_refused_multi_range_falls_back_to_single_ranges(mode: str) -> None:
    fake = FakeRegistry(multirange=mode)

    async def body(client: RegistryClient) -> None:
        assert await client.read_blob_ranges(REF, DATA_DIGEST, RANGES) == EXPECTED
        assert len(fake.requests(method="GET")) == 1 + len(RANGES)
        # It remembers: the next multi-range read goes straight to single ranges.
        assert await client.read_blob_ranges(REF, DATA_DIGEST, RANGES) == EXPECTED
        assert len(fake.requests(method="GET")) == 1 + 2 * len(RANGES)

    run(fake, body)


@pytest.mark.parametrize("length", [1000, 1 << 20])
def test_a_tail_read_is_one_suffix_range_request(length: int) -> None:
    fake = FakeRegistry()
    got = run(fake, lambda c: c.read_blob_tail(REF, DATA_DIGEST, length))
    assert got == (len(DATA), DATA[-length:])
    assert [(r.method, r.headers["range"]) for r in fake.requests()] == [
        ("GET", f"bytes=-{length}")]


def test_a_registry_that_ignores_suffix_ranges_gets_a_head_and_a_range() -> None:
    fake = FakeRegistry(suffix_ranges=False)
    got = run(fake, lambda c: c.read_blob_tail(REF, DATA_DIGEST, 1000))
    assert got == (len(DATA), DATA[-1000:])
    assert [(r.method, r.headers.get("range")) for r in fake.requests()] == [
        ("GET", "bytes=-1000"), ("HEAD", None), ("GET", f"bytes={len(DATA) - 1000}-16383")]


def test_a_tail_answer_that_is_not_the_end_of_the_blob_is_range_error() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda request: httpx.Response(206, content=DATA[:1000], headers={
        "Content-Range": f"bytes 0-999/{len(DATA)}"}))
    with pytest.raises(RangeError, match="last 1000 bytes"):
        run(fake, lambda c: c.read_blob_tail(REF, DATA_DIGEST, 1000))


def test_overlapping_ranges_are_merged_into_one_request() -> None:
    fake = FakeRegistry()
    ranges = [(100, 200), (0, 10), (150, 250), (250, 260), (5, 8)]
    got = run(fake, lambda c: c.read_blob_ranges(REF, DATA_DIGEST, ranges))
    assert got == [DATA[a:b] for a, b in ranges]
    [request] = fake.requests(method="GET")
    assert request.headers["range"] == "bytes=0-9,100-259"


def test_range_past_the_end_does_not_disable_multi_range() -> None:
    fake = FakeRegistry()

    async def body(client: RegistryClient) -> None:
        with pytest.raises(RangeError, match="not within blob"):
            await client.read_blob_ranges(REF, DATA_DIGEST, [(0, 10), (16000, 17000)])
        assert await client.read_blob_ranges(REF, DATA_DIGEST, RANGES) == EXPECTED
        assert fake.requests(method="GET")[-1].headers["range"] == "bytes=0-9,100-199,16000-16383"

    run(fake, body)


def test_token_is_refetched_after_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRegistry(auth="bearer")
    clock = [1000.0]
    monkeypatch.setattr("stargz.registry.auth.time.monotonic", lambda: clock[0])

    async def body(client: RegistryClient) -> None:
        await client.head_blob(REF, DATA_DIGEST)
        clock[0] += 200  # within the 300 s lifetime
        await client.head_blob(REF, DATA_DIGEST)
        assert len(fake.requests("auth.example")) == 1
        clock[0] += 100  # past it (less the safety margin)
        await client.head_blob(REF, DATA_DIGEST)
        assert len(fake.requests("auth.example")) == 2

    run(fake, body)


def test_wrong_content_range_is_range_error() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(206, content=DATA[0:10], headers={
        "Content-Range": f"bytes 0-9/{len(DATA)}"}))
    with pytest.raises(RangeError, match="asked for bytes 50-59, got 0-9"):
        run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 50, 60))


def test_short_body_is_retried_then_right() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(206, content=DATA[50:55], headers={
        "Content-Range": f"bytes 50-59/{len(DATA)}", "Content-Length": "10"}))
    assert run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 50, 60)) == DATA[50:60]
    assert len(fake.requests()) == 2


def test_range_past_end_and_ignored_range() -> None:
    fake = FakeRegistry()
    with pytest.raises(RangeError, match="not within blob"):
        run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 16000, 17000))
    fake.faults.append(lambda r: httpx.Response(200, content=DATA))
    assert run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 7, 9)) == DATA[7:9]


# -- retries -----------------------------------------------------------------------------------

def test_5xx_429_and_resets_are_retried() -> None:
    fake = FakeRegistry()

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    fake.faults += [lambda r: httpx.Response(500), lambda r: httpx.Response(
        429, headers={"Retry-After": "0"}), reset]
    assert run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 0, 4)) == DATA[:4]
    assert len(fake.requests()) == 4


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(max_retry_after=0.5)
    assert policy.backoff(0, 100.0) == 0.5
    assert policy.backoff(0, 0.2) == 0.2
    assert 0.015 <= policy.backoff(0, None) <= 0.03
    assert policy.backoff(30, None) <= policy.max_backoff


def test_gives_up_with_transport_error() -> None:
    fake = FakeRegistry()
    fake.faults += [lambda r: httpx.Response(503)] * 10
    with pytest.raises(TransportError) as info:
        run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 0, 4))
    assert "HTTP 503" in str(info.value) and "after 4 attempts" in str(info.value)
    assert "\n" not in str(info.value)
    assert len(fake.requests()) == 4


# -- redirects ---------------------------------------------------------------------------------

def test_redirect_is_followed_cached_and_reresolved_when_expired() -> None:
    fake = FakeRegistry(redirect=True, auth="basic")
    creds = CredentialStore({"reg.example": Credentials("alice", SECRET)})

    async def body(client: RegistryClient) -> None:
        assert await client.read_blob_range(REF, DATA_DIGEST, 0, 10) == DATA[:10]
        registry_gets = len(fake.requests(method="GET"))
        assert await client.read_blob_ranges(REF, DATA_DIGEST, RANGES) == EXPECTED
        assert len(fake.requests(method="GET")) == registry_gets  # straight to storage
        for request in fake.requests("storage.example"):
            assert "authorization" not in request.headers
        fake.expired.update(str(r.url) for r in fake.requests("storage.example"))
        assert await client.read_blob_range(REF, DATA_DIGEST, 5, 15) == DATA[5:15]
        assert len(fake.requests(method="GET")) == registry_gets + 1

    run(fake, body, creds=creds)


# -- streams -----------------------------------------------------------------------------------

def test_stream_resumes_after_a_broken_connection() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(200, headers={"Content-Length": str(len(DATA))},
                                                stream=FailingStream(DATA[:5000])))
    assert run(fake, lambda c: c.get_blob(REF, DATA_DIGEST)) == DATA
    assert fake.requests()[-1].headers["range"] == "bytes=5000-"


def test_stream_detects_corruption() -> None:
    fake = FakeRegistry()
    fake.blobs[DATA_DIGEST] = DATA[:-1] + b"X"
    with pytest.raises(VerificationError):
        run(fake, lambda c: c.get_blob(REF, DATA_DIGEST))


def test_missing_blob() -> None:
    fake = FakeRegistry()
    missing = sha(b"nothing")

    async def body(client: RegistryClient) -> None:
        assert not await client.blob_exists(REF, missing)
        with pytest.raises(NotFoundError):
            await client.head_blob(REF, missing)
        with pytest.raises(NotFoundError, match="BLOB_UNKNOWN"):
            await client.get_blob(REF, missing)
        assert await client.head_blob(REF, DATA_DIGEST) == len(DATA)

    run(fake, body)


# -- auth --------------------------------------------------------------------------------------

def test_bearer_token_by_post_is_cached() -> None:
    fake = FakeRegistry(auth="bearer")
    creds = CredentialStore({"reg.example": Credentials("alice", SECRET)})

    async def body(client: RegistryClient) -> None:
        for _ in range(3):
            assert await client.read_blob_range(REF, DATA_DIGEST, 0, 3) == DATA[:3]

    run(fake, body, creds=creds)
    token_requests = fake.requests("auth.example")
    assert [r.method for r in token_requests] == ["POST"]
    assert b"scope=repository%3Ateam%2Fapp%3Apull" in token_requests[0].content


def test_concurrent_first_requests_share_one_token() -> None:
    fake = FakeRegistry(auth="bearer")

    async def body(client: RegistryClient) -> list[bytes]:
        return list(await asyncio.gather(
            *(client.read_blob_range(REF, DATA_DIGEST, i, i + 5) for i in range(8))))

    assert run(fake, body) == [DATA[i:i + 5] for i in range(8)]
    assert len(fake.requests("auth.example")) == 1


def test_bearer_falls_back_to_get_and_anonymous() -> None:
    fake = FakeRegistry(auth="bearer")
    fake.post_token_status = 405
    creds = CredentialStore({"reg.example": Credentials("alice", SECRET)})
    assert run(fake, lambda c: c.head_blob(REF, DATA_DIGEST), creds=creds) == len(DATA)
    assert [r.method for r in fake.requests("auth.example")] == ["POST", "GET"]
    anonymous = FakeRegistry(auth="bearer")
    assert run(anonymous, lambda c: c.head_blob(REF, DATA_DIGEST)) == len(DATA)
    [get] = anonymous.requests("auth.example")
    assert "authorization" not in get.headers


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_wrong_credentials_are_a_clean_auth_error(auth: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeRegistry(auth=auth)
    creds = CredentialStore({"reg.example": Credentials("alice", "wrong-" + SECRET)})
    with pytest.raises(AuthError) as info:
        run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 0, 3), creds=creds)
    message = str(info.value)
    assert "\n" not in message and SECRET not in message
    assert SECRET not in caplog.text
    encoded = base64.b64encode(f"alice:wrong-{SECRET}".encode()).decode()
    assert encoded not in message and encoded not in caplog.text


def test_basic_without_credentials() -> None:
    fake = FakeRegistry(auth="basic")
    with pytest.raises(AuthError, match="requires credentials"):
        run(fake, lambda c: c.head_blob(REF, DATA_DIGEST))


# -- mirrors -----------------------------------------------------------------------------------

def test_mirrors_in_order_then_origin(tmp_path: Path) -> None:
    (tmp_path / "reg.example").mkdir()
    (tmp_path / "reg.example" / "hosts.toml").write_text(
        '[host."https://down.example"]\n[host."https://empty.example"]\n')
    fake = FakeRegistry()
    down: Fault = lambda r: httpx.Response(502) if r.url.host == "down.example" else None  # noqa: E731
    empty: Fault = lambda r: httpx.Response(404) if r.url.host == "empty.example" else None  # noqa: E731
    fake.faults += [down] * (FAST.max_retries + 1) + [empty]
    hosts = HostsConfig.create(tmp_path)
    assert run(fake, lambda c: c.read_blob_range(REF, DATA_DIGEST, 1, 3), hosts=hosts) == DATA[1:3]
    assert [r.url.host for r in fake.log] == (["down.example"] * (FAST.max_retries + 1)
                                              + ["empty.example", "reg.example"])


# -- uploads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_push_blob_bytes_and_file(tmp_path: Path, chunk_size: int | None) -> None:
    fake = FakeRegistry()
    payload = bytes(reversed(DATA)) + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(payload + b"file")

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(REF, payload, chunk_size=chunk_size) == sha(payload)
        assert await client.push_blob(REF, path, chunk_size=chunk_size) == sha(payload + b"file")
        before = len(fake.log)
        await client.push_blob(REF, payload)  # already there: one HEAD, no upload
        assert [r.method for r in fake.log[before:]] == ["HEAD"]
        with pytest.raises(VerificationError):
            await client.push_blob(REF, b"abc", digest=sha(b"abd"))

    run(fake, body)
    assert fake.blobs[sha(payload)] == payload
    assert fake.blobs[sha(payload + b"file")] == payload + b"file"
    patches = [r for r in fake.log if r.method == "PATCH"]
    assert len(patches) == (0 if chunk_size is None else 2 * 17)


def test_mount_and_put_manifest() -> None:
    fake = FakeRegistry()
    other = sha(b"not here")
    raw = b'{"schemaVersion":2,"mediaType":"%s"}' % OCI_MANIFEST.encode()

    async def body(client: RegistryClient) -> None:
        assert await client.mount_blob(REF, DATA_DIGEST, "team/base")
        assert not await client.mount_blob(REF, other, "team/base")
        assert await client.put_manifest(REF, raw, OCI_MANIFEST) == sha(raw)
        assert (await client.get_manifest(REF)).raw == raw

    run(fake, body)
    assert not fake.uploads  # the refused mount's upload was cancelled
