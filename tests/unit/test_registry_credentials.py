"""Credentials from the Docker config, helpers, flags and env; secrets stay out of reprs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest

from stargz.errors import AuthError, ConfigError
from stargz.registry.credentials import Credentials, CredentialStore, normalize_host

SECRET = "s3cr3t-Pa55"


def write_config(directory: Path, config: dict[str, object]) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def write_helper(directory: Path, name: str, script: str) -> None:
    helper = directory / f"docker-credential-{name}"
    helper.write_text("#!/bin/sh\n" + script)
    helper.chmod(0o755)


def get(store: CredentialStore, host: str) -> Credentials | None:
    return asyncio.run(store.get(host))


def test_normalize_host() -> None:
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("registry-1.docker.io") == "docker.io"
    assert normalize_host("http://h:5000/v2/") == "h:5000"
    assert normalize_host("h:5000") == "h:5000"


def test_auths_base64_and_plain_fields(tmp_path: Path) -> None:
    encoded = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    config = write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": encoded},
        "h:5000": {"username": "bob", "password": SECRET},
        "tok.example": {"identitytoken": "refresh-me"},
    }})
    store = CredentialStore(docker_config=config)
    assert get(store, "docker.io") == Credentials("alice", SECRET)
    assert get(store, "h:5000") == Credentials("bob", SECRET)
    token = get(store, "tok.example")
    assert token is not None and token.identity_token and token.secret == "refresh-me"
    assert get(store, "other.example") is None


def test_explicit_beats_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"auths": {"h:1": {"username": "x", "password": "y"}}})
    store = CredentialStore(per_host={"h:1": Credentials("flag", SECRET)}, docker_config=config)
    assert get(store, "h:1") == Credentials("flag", SECRET)
    # Explicit credentials are for their host only: another host gets nothing from them.
    other = CredentialStore(per_host={"h:2": Credentials("d", SECRET)}, docker_config=config)
    assert get(other, "h:1") == Credentials("x", "y")
    assert get(other, "h:3") is None


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    for name in ("STARGZ_USERNAME", "STARGZ_PASSWORD", "STARGZ_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return write_config(tmp_path, {"auths": {"h:2": {"username": "cfg", "password": "cfgpw"}}})


def test_environment_is_for_stargz_registry_only(docker_config: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARGZ_USERNAME", "envuser")
    monkeypatch.setenv("STARGZ_PASSWORD", SECRET)
    monkeypatch.setenv("STARGZ_REGISTRY", "h:2")
    store = CredentialStore.from_environment()
    assert get(store, "h:2") == Credentials("envuser", SECRET)
    assert get(store, "h:9") is None and get(store, "docker.io") is None
    monkeypatch.setenv("STARGZ_REGISTRY", "https://index.docker.io/v1/")
    assert get(CredentialStore.from_environment(), "registry-1.docker.io") == Credentials(
        "envuser", SECRET)
    assert get(CredentialStore.from_environment(), "h:2") == Credentials("cfg", "cfgpw")
    monkeypatch.delenv("STARGZ_PASSWORD")
    with pytest.raises(ConfigError) as info:
        CredentialStore.from_environment()
    assert "STARGZ_PASSWORD" in str(info.value)


def test_environment_without_registry_is_ignored_with_a_warning(
        docker_config: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("STARGZ_USERNAME", "envuser")
    monkeypatch.setenv("STARGZ_PASSWORD", SECRET)
    store = CredentialStore.from_environment()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "STARGZ_REGISTRY" in caplog.text and SECRET not in caplog.text
    for host in ("h:1", "evil.example", "docker.io"):
        assert get(store, host) is None
    assert get(store, "h:2") == Credentials("cfg", "cfgpw")  # the Docker config still counts


def test_flags_beat_environment_for_their_hosts(docker_config: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARGZ_USERNAME", "envuser")
    monkeypatch.setenv("STARGZ_PASSWORD", SECRET)
    monkeypatch.setenv("STARGZ_REGISTRY", "h:2")
    store = CredentialStore.from_environment({"h:2": Credentials("flag", "flagpw"),
                                              "h:5": Credentials("flag", "flagpw")})
    assert get(store, "h:2") == get(store, "h:5") == Credentials("flag", "flagpw")
    assert get(store, "h:6") is None


def test_cred_helpers_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    write_helper(tmp_path, "per", 'read h; echo "{\\"Username\\":\\"u-$h\\",\\"Secret\\":\\"'
                 + SECRET + '\\"}"\n')
    write_helper(tmp_path, "store", 'read h; if [ "$h" = "https://index.docker.io/v1/" ]; then '
                 'echo \'{"Username":"<token>","Secret":"idtok"}\'; else '
                 'echo "credentials not found in native keychain"; exit 1; fi\n')
    write_helper(tmp_path, "broken", f"echo 'oops {SECRET}' >&2; exit 3\n")
    config = write_config(tmp_path, {"credHelpers": {"h:3": "per", "h:4": "broken"},
                                     "credsStore": "store",
                                     "auths": {"h:5": {"username": "inline", "password": "p"}}})
    store = CredentialStore(docker_config=config)
    assert get(store, "h:3") == Credentials("u-h:3", SECRET)
    hub = get(store, "docker.io")
    assert hub is not None and hub.identity_token and hub.secret == "idtok"
    # The store does not know h:5: the inline entry is used.
    assert get(store, "h:5") == Credentials("inline", "p")
    with pytest.raises(AuthError) as info:
        get(store, "h:4")
    assert SECRET not in str(info.value)
    missing = write_config(tmp_path, {"credsStore": "absent"})
    with pytest.raises(AuthError, match="not installed"):
        get(CredentialStore(docker_config=missing), "h:6")


def test_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        get(CredentialStore(docker_config=path), "h")
    write_config(tmp_path, {"auths": {"h": {"auth": "!!notbase64"}}})
    with pytest.raises(ConfigError) as info:
        get(CredentialStore(docker_config=path), "h")
    assert "notbase64" not in str(info.value)


def test_secrets_never_in_repr() -> None:
    creds = Credentials("alice", SECRET)
    store = CredentialStore(per_host={"h": creds})
    for text in (repr(creds), str(creds), repr(store), f"{creds}", str([creds])):
        assert SECRET not in text
    assert "alice" in repr(creds)


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auth_json_files_come_before_the_docker_config_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    runtime = write_config(first, {"auths": {"reg.example/team/app": _auth("podman", SECRET)}})
    legacy = write_config(second, {"auths": {"reg.example": _auth("legacy", "x"),
                                             "other.example": _auth("other", "y")}})
    docker = write_config(tmp_path, {"auths": {"reg.example": _auth("docker", "z"),
                                               "third.example": _auth("third", "w")}})
    store = CredentialStore(docker_config=docker, auth_files=[runtime, tmp_path / "none.json",
                                                              legacy])
    assert get(store, "reg.example") == Credentials("podman", SECRET)  # a repo-scoped key
    assert get(store, "other.example") == Credentials("other", "y")
    assert get(store, "third.example") == Credentials("third", "w")
    assert get(store, "fourth.example") is None
    assert SECRET not in repr(store)


def test_containers_auth_files_follow_podman(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from stargz.registry.credentials import containers_auth_files

    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert containers_auth_files() == [tmp_path / "run/containers/auth.json",
                                       tmp_path / "config/containers/auth.json"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert containers_auth_files()[0] == Path(f"/run/containers/{os.getuid()}/auth.json")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "named.json"))
    assert containers_auth_files() == [tmp_path / "named.json"]
    assert containers_auth_files(tmp_path / "flag.json") == [tmp_path / "flag.json"]
