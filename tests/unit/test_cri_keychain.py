"""The CRI keychain's parts: AuthConfig as credentials (containerd's parseAuth rules), the host
keychain (replace, restore after a failed pull) and CredentialStore asking it first."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from stargz.config import load_file_config
from stargz.cri.api import runtime_v1_pb2 as cri
from stargz.cri.auth import credentials_from_auth
from stargz.cri.proxy import CriImageProxy, CriKeychainSettings, settings_from_config
from stargz.errors import ConfigError
from stargz.registry.credentials import Credentials, CredentialStore
from stargz.registry.keychain import HostKeychain


def test_username_password_then_identity_token_then_auth() -> None:
    both = cri.AuthConfig(username="u", password="p", identity_token="t")
    assert credentials_from_auth(both, "r.example") == Credentials("u", "p")
    token = credentials_from_auth(cri.AuthConfig(identity_token="t"), "r.example")
    assert token == Credentials("", "t", identity_token=True)
    auth = base64.b64encode(b"user:pa:ss").decode()
    assert credentials_from_auth(cri.AuthConfig(auth=auth), "r.example") == Credentials(
        "user", "pa:ss")


def test_unusable_auth_is_none_and_never_logs_the_secret(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    assert credentials_from_auth(cri.AuthConfig(auth="not base64!"), "r.example") is None
    assert credentials_from_auth(cri.AuthConfig(registry_token="s3cret"), "r.example") is None
    other = cri.AuthConfig(username="u", password="s3cret", server_address="https://other.io/v1/")
    assert credentials_from_auth(other, "r.example") is None
    same = cri.AuthConfig(username="u", password="p", server_address="https://r.example/v2/")
    assert credentials_from_auth(same, "r.example") == Credentials("u", "p")
    assert "s3cret" not in caplog.text
    assert "registry token" in caplog.text and "other.io" in caplog.text


def test_pull_keeps_credentials_per_host_and_a_failed_pull_puts_them_back() -> None:
    keychain = HostKeychain()
    proxy = CriImageProxy(CriKeychainSettings(Path("/nonexistent.sock")), keychain)

    def request(image: str, password: str) -> bytes:
        auth = cri.AuthConfig(username="u", password=password)
        return cri.PullImageRequest(image=cri.ImageSpec(image=image), auth=auth).SerializeToString()

    good = proxy._keep_credentials(request("r.example:5000/app:v1", "good"))
    assert good is not None and keychain.get("r.example:5000") == Credentials("u", "good")
    assert keychain.get("other.example") is None
    wrong = proxy._keep_credentials(request("r.example:5000/app:v2", "wrong"))
    assert wrong is not None and keychain.get("r.example:5000") == Credentials("u", "wrong")
    keychain.restore(*wrong)
    assert keychain.get("r.example:5000") == Credentials("u", "good")
    docker_hub = proxy._keep_credentials(request("library/busybox", "hub"))
    assert docker_hub is not None and keychain.hosts() == ["docker.io", "r.example:5000"]


def test_credential_store_asks_the_keychain_first_at_each_lookup() -> None:
    keychain = HostKeychain()
    store = CredentialStore({"r.example": Credentials("env", "e")}, keychain=keychain)
    assert asyncio.run(store.get("r.example")) == Credentials("env", "e")
    keychain.put("r.example", Credentials("kubelet", "k"))
    assert asyncio.run(store.get("r.example")) == Credentials("kubelet", "k")
    assert asyncio.run(store.get("elsewhere.example")) is None


def test_settings_from_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"

    def settings(text: str) -> CriKeychainSettings | None:
        config.write_text(text)
        return settings_from_config(load_file_config(config), str(config))

    assert settings("[cri_keychain]\nenable_keychain = true\n") == CriKeychainSettings(
        Path("/run/containerd/containerd.sock"))
    assert settings('[cri_keychain]\nenable_keychain = false\nimage_service_path = "/x"\n') is None
    with pytest.raises(ConfigError, match="absolute path"):
        settings('[cri_keychain]\nenable_keychain = true\nimage_service_path = "rel"\n')
    with pytest.raises(ConfigError, match=r"cri_keychain\.enable_keychian"):
        settings("[cri_keychain]\nenable_keychian = true\n")
