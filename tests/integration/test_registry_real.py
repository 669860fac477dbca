"""RegistryClient against the real CNCF registry: plain HTTP, basic auth, TLS with our CA, and
token auth with our token server. Push blobs and manifests, pull them back, read ranges."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stargz.errors import AuthError, NotFoundError, TransportError
from stargz.registry import (
    Credentials,
    CredentialStore,
    HostsConfig,
    Reference,
    RegistryClient,
    RetryPolicy,
)
from stargz.registry.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256_digest
from tests.support import registry as support

pytestmark = pytest.mark.integration
KINDS = {"plain": ("none", False), "basic": ("basic", False), "tls-basic": ("basic", True),
         "token": ("token", False), "tls-token": ("token", True)}
BLOB = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
FAST = RetryPolicy(max_retries=2, initial_backoff=0.01)


def _running(request: pytest.FixtureRequest,
             factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    auth, tls = KINDS[request.param]
    with support.run_registry(factory.mktemp(request.param), auth=auth, tls=tls) as running:
        yield running


# One fixture per set of kinds a test applies to, so no test is generated only to be skipped.
@pytest.fixture(scope="module", params=list(KINDS))
def registry(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    yield from _running(request, tmp_path_factory)


@pytest.fixture(scope="module", params=[k for k, (auth, _) in KINDS.items() if auth != "none"])
def auth_registry(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    yield from _running(request, tmp_path_factory)


@pytest.fixture(scope="module", params=[k for k, (auth, _) in KINDS.items() if auth == "token"])
def token_registry(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    yield from _running(request, tmp_path_factory)


@pytest.fixture(scope="module", params=[k for k, (_, tls) in KINDS.items() if tls])
def tls_registry(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RunningRegistry]:
    yield from _running(request, tmp_path_factory)


def docker_config(directory: Path, host: str, username: str, password: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return path


def client_for(reg: support.RunningRegistry, password: str | None = None) -> RegistryClient:
    """A client that finds its credentials in a Docker config file, as a user's would."""
    creds = CredentialStore()
    if reg.username is not None:
        config = docker_config(reg.workdir / f"docker-{password or 'good'}", reg.host,
                               reg.username, password or str(reg.password))
        creds = CredentialStore(docker_config=config)
    return RegistryClient(HostsConfig.create(reg.hosts_dir()), creds, retry=FAST)


def own_credentials(reg: support.RunningRegistry) -> CredentialStore:
    """The registry's credentials, for its host only (none when it wants none)."""
    if reg.username is None:
        return CredentialStore()
    return CredentialStore({reg.host: Credentials(reg.username, str(reg.password))})


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def push_image(client: RegistryClient, ref: Reference) -> tuple[str, str, bytes]:
    layer = await client.push_blob(ref, BLOB, chunk_size=100_000)
    config = await client.push_blob(ref, b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 37},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": len(BLOB)}],
    }).encode()
    return layer, await client.put_manifest(ref, manifest, OCI_MANIFEST), manifest


def test_push_and_pull_back(registry: support.RunningRegistry) -> None:
    ref = Reference.parse(f"{registry.host}/test/app:v1")

    async def body() -> None:
        async with client_for(registry) as client:
            layer, digest, raw = await push_image(client, ref)
            assert layer == sha256_digest(BLOB)
            by_tag = await client.get_manifest(ref)
            by_digest = await client.get_manifest(ref.with_digest(digest))
            assert by_tag.raw == by_digest.raw == raw
            assert by_tag.digest == digest and by_tag.media_type == OCI_MANIFEST
            assert await client.head_blob(ref, layer) == len(BLOB)
            assert await client.get_blob(ref, layer) == BLOB
            assert await client.read_blob_range(ref, layer, 1000, 1100) == BLOB[1000:1100]
            ranges = [(0, 1), (4096, 8192), (299_000, 300_000), (10, 20)]
            got = await client.read_blob_ranges(ref, layer, ranges)
            assert got == [BLOB[a:b] for a, b in ranges]
            # A second repository gets the blob by mount, without uploading it again.
            other = Reference.parse(f"{registry.host}/test/other:v1")
            assert await client.mount_blob(other, layer, "test/app")
            assert await client.read_blob_range(other, layer, 5, 9) == BLOB[5:9]
            with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN"):
                await client.get_manifest(ref.with_tag("absent"))
            assert not await client.blob_exists(ref, sha256_digest(b"absent"))

    run(body())


def test_wrong_credentials_fail_cleanly(auth_registry: support.RunningRegistry,
                                        caplog: pytest.LogCaptureFixture) -> None:
    registry = auth_registry
    caplog.set_level(logging.DEBUG)
    ref = Reference.parse(f"{registry.host}/test/app:v1")
    wrong = "WrongPassword-xyz"

    async def body() -> None:
        async with client_for(registry, password=wrong) as client:
            with pytest.raises(AuthError) as info:
                await client.get_manifest(ref)
            message = str(info.value)
            assert "\n" not in message and wrong not in message
        if registry.helpers:
            return  # the token server hands anonymous clients tokens too (as the shared one does)
        async with RegistryClient(HostsConfig.create(registry.hosts_dir()), retry=FAST) as anon:
            with pytest.raises(AuthError, match="requires credentials"):
                await anon.push_blob(ref, b"anonymous push")

    run(body())
    assert wrong not in caplog.text
    encoded = base64.b64encode(f"{registry.username}:{wrong}".encode()).decode()
    assert encoded not in caplog.text


def test_token_server_saw_oauth_post(token_registry: support.RunningRegistry) -> None:
    registry = token_registry
    ref = Reference.parse(f"{registry.host}/test/tok:v1")
    creds = own_credentials(registry)

    async def body() -> None:
        async with RegistryClient(HostsConfig.create(registry.hosts_dir()), creds) as client:
            await client.push_blob(ref, b"token pushed")
            assert await client.get_blob(ref, sha256_digest(b"token pushed")) == b"token pushed"

    before = len(support.token_requests(registry))
    run(body())
    assert "POST password" in support.token_requests(registry)[before:]


def test_tls_needs_our_ca(tls_registry: support.RunningRegistry) -> None:
    registry = tls_registry
    ref = Reference.parse(f"{registry.host}/test/app:v1")

    skip_dir = registry.workdir / "skip-verify.d"
    (skip_dir / registry.host).mkdir(parents=True, exist_ok=True)
    (skip_dir / registry.host / "hosts.toml").write_text(
        f'server = "{registry.url}"\nskip_verify = true\n')
    creds = own_credentials(registry)

    async def body() -> None:
        async with RegistryClient(retry=FAST) as client:  # system CAs only
            with pytest.raises(TransportError, match="TLS verification failed"):
                await client.head_blob(ref, sha256_digest(BLOB))
        async with RegistryClient(HostsConfig.create(skip_dir), creds, retry=FAST) as client:
            digest = await client.push_blob(ref, b"unverified but encrypted")
            assert await client.head_blob(ref, digest) == 24

    run(body())


def test_dead_mirror_falls_back_to_origin(registry: support.RunningRegistry) -> None:
    hosts_dir = registry.workdir / "mirrored.d"
    entry = hosts_dir / registry.host
    entry.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{registry.url}"']
    if registry.ca_file:
        lines.append(f'ca = "{registry.ca_file}"')
    lines.append(f'[host."http://127.0.0.1:{support.free_port()}"]')
    (entry / "hosts.toml").write_text("\n".join(lines) + "\n")
    ref = Reference.parse(f"{registry.host}/test/mirrored:v1")
    creds = own_credentials(registry)

    async def body() -> None:
        async with RegistryClient(HostsConfig.create(hosts_dir), creds, retry=FAST) as client:
            digest = await client.push_blob(ref, b"via the origin")
            assert await client.read_blob_range(ref, digest, 4, 7) == b"the"

    run(body())
