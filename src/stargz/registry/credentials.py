"""Registry credentials, each tied to the registry host it was given for: explicit ones (flags),
STARGZ_USERNAME/STARGZ_PASSWORD for the one host in STARGZ_REGISTRY, containers' auth.json files
(podman's and buildah's logins, when asked for) and the Docker config (``auths``,
``credHelpers``, ``credsStore``; auth.json has the same shape). There is no credential for "any
host": a registry never receives another registry's secret. Secrets never reach reprs, logs or
error messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from stargz.errors import AuthError, ConfigError
from stargz.registry.reference import DOCKER_HUB

# Docker keeps Docker Hub's credentials under this legacy key; helpers expect it as server URL.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = {DOCKER_HUB, "index.docker.io", "registry-1.docker.io"}
_IDENTITY_TOKEN_USER = "<token>"
HELPER_TIMEOUT = 30.0
ENV_USERNAME, ENV_PASSWORD, ENV_REGISTRY = "STARGZ_USERNAME", "STARGZ_PASSWORD", "STARGZ_REGISTRY"
log = logging.getLogger("stargz.registry")


@dataclass(frozen=True)
class Credentials:
    """A username and secret; ``identity_token`` set means the secret is an OAuth2 refresh token."""

    username: str
    secret: str = field(repr=False)
    identity_token: bool = False

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=<hidden>)"

    __str__ = __repr__

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def normalize_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000/v2/`` -> ``h:5000``."""
    netloc = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    return DOCKER_HUB if netloc in _HUB_HOSTS else netloc


def docker_config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def containers_auth_files(authfile: Path | None = None) -> list[Path]:
    """Where podman and buildah keep their logins (containers-auth.json(5)), in their order:
    ``authfile`` (``--authfile``) alone when given, else ``$REGISTRY_AUTH_FILE``, else
    ``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/UID/auth.json`` without it)
    and then ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``)."""
    if authfile is not None:
        return [authfile]
    named = os.environ.get("REGISTRY_AUTH_FILE")
    if named:
        return [Path(named)]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    primary = Path(runtime) / "containers" if runtime else Path(f"/run/containers/{os.getuid()}")
    config_home = os.environ.get("XDG_CONFIG_HOME")
    config = Path(config_home) if config_home else Path.home() / ".config"
    return [primary / "auth.json", config / "containers" / "auth.json"]


class HostLookup(Protocol):
    """Credentials handed over at run time, per host (``registry.keychain.HostKeychain``)."""

    def get(self, host: str) -> Credentials | None: ...


class CredentialStore:
    """Looks credentials up per registry host, in order: the run-time keychain (the CRI
    keychain's, from kubelet's PullImage), explicit ones for that host (flags, environment), then
    the Docker config file (helpers before inline ``auths``, as docker does)."""

    def __init__(self, per_host: Mapping[str, Credentials] | None = None,
                 docker_config: Path | None = None, auth_files: Sequence[Path] = (),
                 keychain: HostLookup | None = None) -> None:
        """``auth_files`` (containers' auth.json) are asked before ``docker_config``; the first
        file with an entry for a host gives its credentials. ``keychain`` is asked at each
        lookup (never cached here): a newer pull's credentials replace older ones."""
        self._keychain = keychain
        self._per_host = {normalize_host(h): c for h, c in (per_host or {}).items()}
        self._files = [*auth_files, *([docker_config] if docker_config is not None else [])]
        self._found: dict[str, Credentials | None] = {}

    def __repr__(self) -> str:
        files = ", ".join(str(f) for f in self._files) or None
        return f"CredentialStore(hosts={sorted(self._per_host)}, config={files})"

    @classmethod
    def anonymous(cls) -> CredentialStore:
        return cls()

    @classmethod
    def from_environment(cls, explicit: Mapping[str, Credentials] | None = None,
                         auth_files: Sequence[Path] = ()) -> CredentialStore:
        """``explicit`` (per host, from flags) first, then STARGZ_USERNAME/STARGZ_PASSWORD for
        the host in STARGZ_REGISTRY, then ``auth_files``, then the Docker config file."""
        from stargz.registry.keychain import process_keychain  # it imports this module

        per_host = dict(environment_credentials())
        per_host.update({normalize_host(h): c for h, c in (explicit or {}).items()})
        return cls(per_host, docker_config=docker_config_path(), auth_files=auth_files,
                   keychain=process_keychain())

    async def get(self, host: str) -> Credentials | None:
        """Credentials for ``host`` (host[:port]) or None for anonymous access."""
        host = normalize_host(host)
        if self._keychain is not None:
            handed = self._keychain.get(host)
            if handed is not None:
                return handed
        if host in self._per_host:
            return self._per_host[host]
        if host not in self._found:
            self._found[host] = await self._from_files(host)
        return self._found[host]

    async def _from_files(self, host: str) -> Credentials | None:
        for path in self._files:
            found = await _from_config_file(path, host)
            if found is not None:
                return found
        return None


async def _from_config_file(path: Path, host: str) -> Credentials | None:
    """``host``'s entry in a Docker config or auth.json file (helpers before ``auths``)."""
    config = _load_config(path)
    if config is None:
        return None
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(host) or config.get("credsStore")
    if helper:
        found = await run_credential_helper(str(helper), host)
        if found is not None:
            return found
    return _from_auths(config.get("auths") or {}, host, path)


def environment_credentials() -> dict[str, Credentials]:
    """STARGZ_USERNAME/STARGZ_PASSWORD, for the one host named by STARGZ_REGISTRY. Without it
    they are ignored (a WARNING says so): a registry an image names must not receive them."""
    username = os.environ.get(ENV_USERNAME)
    password = os.environ.get(ENV_PASSWORD)
    registry = os.environ.get(ENV_REGISTRY, "").strip()
    if not (username or password):
        return {}
    if not registry:
        log.warning("%s/%s are ignored: set %s to the registry host they are for",
                    ENV_USERNAME, ENV_PASSWORD, ENV_REGISTRY)
        return {}
    if not (username and password):
        raise ConfigError(f"{ENV_USERNAME} needs {ENV_PASSWORD} and the other way round")
    host = normalize_host(registry)
    if not host or any(c in host for c in "/@ "):
        raise ConfigError(f"{ENV_REGISTRY} must be a registry host[:port], not {registry!r}")
    return {host: Credentials(username, password)}


def _load_config(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"can not read Docker config {path}: {type(err).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Docker config {path} is not a JSON object")
    return data


def _from_auths(auths: Mapping[str, Any], host: str, path: Path | None) -> Credentials | None:
    for key, entry in auths.items():
        if normalize_host(key) != host or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(entry.get("username") or "", str(entry["identitytoken"]), True)
        if entry.get("auth"):
            return _decode_auth(str(entry["auth"]), host, path)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _decode_auth(value: str, host: str, path: Path | None) -> Credentials:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"Docker config {path}: auth for {host} is not base64") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise ConfigError(f"Docker config {path}: auth for {host} is not user:password")
    return Credentials(username, password)


async def run_credential_helper(name: str, host: str) -> Credentials | None:
    """Run ``docker-credential-NAME get`` for ``host``; None when the helper knows no entry."""
    server = DOCKER_HUB_AUTH_KEY if host == DOCKER_HUB else host
    program = f"docker-credential-{name}"
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "get", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(proc.communicate(server.encode()), HELPER_TIMEOUT)
    except FileNotFoundError:
        raise AuthError(f"credential helper {program} is not installed") from None
    except TimeoutError:
        proc.kill()
        raise AuthError(f"credential helper {program} did not answer for {host}") from None
    if proc.returncode != 0:
        # Helpers print "credentials not found" on stdout and exit 1 for unknown servers.
        if b"not found" in stdout.lower():
            return None
        raise AuthError(f"credential helper {program} failed for {host} "
                        f"(exit {proc.returncode})")
    return _parse_helper_output(stdout, program, host)


def _parse_helper_output(stdout: bytes, program: str, host: str) -> Credentials | None:
    try:
        data = json.loads(stdout)
        username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise AuthError(f"credential helper {program} gave unreadable output for {host}") from None
    if not secret:
        return None
    if username == _IDENTITY_TOKEN_USER:
        return Credentials("", secret, identity_token=True)
    return Credentials(username, secret)
