"""Where to reach a registry: mirrors, TLS settings and plain-HTTP hosts, in the spirit of
containerd's ``hosts.toml``.

A hosts directory holds ``<host>/hosts.toml`` (``_default/hosts.toml`` serves the others)::

    server = "https://registry.example"        # the origin; http:// makes it plain HTTP
    ca = "/etc/ca.pem"                          # the origin's CA (string or list)
    skip_verify = false
    [host."https://mirror.example"]
      capabilities = ["pull", "resolve"]
      ca = "/etc/mirror-ca.pem"
      skip_verify = false
      override_path = false                     # true: the URL path is the API root as is
      [host."https://mirror.example".header]
        x-custom = "value"

Mirrors are tried in file order, then the origin.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stargz.config import MirrorConfig
from stargz.errors import ConfigError
from stargz.registry.reference import registry_endpoint_host

ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})
_MIRROR_DEFAULT_CAPABILITIES = frozenset({"pull", "resolve"})


@dataclass(frozen=True)
class Endpoint:
    """One place to send registry API requests. ``api_root`` ends with ``/v2`` unless overridden."""

    scheme: str
    host: str  # host[:port], also the key for credentials
    api_root: str  # path prefix, e.g. "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca_files: tuple[Path, ...] = ()
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False
    request_timeout: float | None = None  # seconds; None: the client's; negative: none

    @property
    def tls_key(self) -> tuple[str, tuple[Path, ...], bool, float | None]:
        """Endpoints with equal keys can share one HTTP client."""
        return (self.scheme, self.ca_files, self.skip_verify, self.request_timeout)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.api_root}"

    def ssl_context(self) -> ssl.SSLContext | bool:
        # Plain-HTTP endpoints still verify: a redirect may lead to an https storage URL.
        if self.skip_verify:
            return False
        return verifying_context(self.ca_files)


@functools.lru_cache(maxsize=16)
def verifying_context(ca_files: tuple[Path, ...] = ()) -> ssl.SSLContext:
    """The system's trust store plus ``ca_files``, built once per process (loading the store
    takes tens of milliseconds; a context is safe to share between clients)."""
    context = ssl.create_default_context()
    for ca_file in ca_files:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"can not load CA certificate {ca_file}: {err}") from None
    return context


@dataclass
class HostsConfig:
    """Endpoints per registry host: from a hosts directory, plus hosts named plain HTTP."""

    config_dir: Path | None = None
    insecure_hosts: frozenset[str] = field(default_factory=frozenset)
    # As containerd's MatchLocalhost: a registry on this machine is spoken to in plain HTTP.
    plain_http_localhost: bool = False
    plain_http_all: bool = False  # every registry in plain HTTP (`stargz store --plain-http`)
    # the config file's [resolver.host."H".mirrors], tried before the hosts directory's
    mirrors: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    _cache: dict[str, list[Endpoint]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, config_dir: Path | str | None = None,
               insecure_hosts: Iterable[str] = (),
               plain_http_localhost: bool = False, plain_http_all: bool = False,
               mirrors: Mapping[str, tuple[MirrorConfig, ...]] | None = None) -> HostsConfig:
        return cls(Path(config_dir) if config_dir else None, frozenset(insecure_hosts),
                   plain_http_localhost, plain_http_all,
                   {host: tuple(mirror_endpoint(m) for m in ms)
                    for host, ms in (mirrors or {}).items()})

    def endpoints(self, registry: str, capability: str = "pull") -> list[Endpoint]:
        """Endpoints for ``registry`` that have ``capability``, mirrors first, origin last."""
        if registry not in self._cache:
            self._cache[registry] = [*self.mirrors.get(registry, ()), *self._load(registry)]
        return [ep for ep in self._cache[registry] if capability in ep.capabilities]

    def _load(self, registry: str) -> list[Endpoint]:
        plain = self.plain_http_all or registry in self.insecure_hosts or (
            self.plain_http_localhost and is_localhost(registry))
        default_scheme = "http" if plain else "https"
        origin = Endpoint(default_scheme, registry_endpoint_host(registry), "/v2")
        path = self._hosts_file(registry)
        if path is None:
            return [origin]
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"can not read hosts file {path}: {err}") from None
        return parse_hosts_toml(data, origin, path)

    def plain_http_allowed(self, url: str) -> bool:
        """Whether the host of ``url`` is configured as plain HTTP: named insecure, on loopback
        when loopback is plain, or an ``http://`` endpoint in the hosts directory (of a
        registry loaded so far, or the host's own ``hosts.toml``: a token realm's, say)."""
        netloc = urlsplit(url).netloc
        if self.plain_http_all or (self.plain_http_localhost and is_localhost(netloc)):
            return True
        target = _http_host_port(netloc)
        named = {_http_host_port(registry_endpoint_host(h)) for h in self.insecure_hosts}
        if target in named | {_http_host_port(h) for h in self.insecure_hosts}:
            return True
        if netloc not in self._cache and self._hosts_file(netloc) is not None:
            self._cache[netloc] = self._load(netloc)
        return any(ep.scheme == "http" and _http_host_port(ep.host) == target
                   for endpoints in self._cache.values() for ep in endpoints)

    def _hosts_file(self, registry: str) -> Path | None:
        if self.config_dir is None:
            return None
        for name in (registry, registry.replace(":", "_"), "_default"):
            candidate = self.config_dir / name / "hosts.toml"
            if candidate.is_file():
                return candidate
        return None


def mirror_endpoint(mirror: MirrorConfig) -> Endpoint:
    """A config file's mirror as the reference reads it: ``host[:port][/path]``, HTTPS unless
    ``insecure`` or on loopback, API root ``<path>/v2``."""
    host, _, path = mirror.host.partition("/")
    plain = mirror.insecure or is_localhost(host)
    path = "/" + path.strip("/") if path.strip("/") else ""
    api_root = path if path.endswith("/v2") else f"{path}/v2"
    timeout = mirror.request_timeout_sec or None  # 0: the default
    return Endpoint("http" if plain else "https", host, api_root, _MIRROR_DEFAULT_CAPABILITIES,
                    headers=mirror.header, is_mirror=True, request_timeout=timeout)


def parse_hosts_toml(data: Mapping[str, Any], origin: Endpoint, source: Path) -> list[Endpoint]:
    """Turn one parsed hosts.toml into endpoints (mirrors in order, then the origin)."""
    endpoints = []
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise ConfigError(f"{source}: [host] must be a table of URLs")
    for url, settings in hosts.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: host {url!r} must be a table")
        endpoints.append(_endpoint(url, settings, _MIRROR_DEFAULT_CAPABILITIES, source, True))
    server = data.get("server", f"{origin.scheme}://{origin.host}")
    if not isinstance(server, str):
        raise ConfigError(f"{source}: server must be a URL string")
    origin_settings = {k: v for k, v in data.items() if k not in ("server", "host")}
    origin_endpoint = _endpoint(server, origin_settings, ALL_CAPABILITIES, source, False)
    # The server line is the origin only when no [host] table names the same URL.
    if not any(ep.base_url == origin_endpoint.base_url for ep in endpoints):
        endpoints.append(origin_endpoint)
    return endpoints


def _endpoint(url: str, settings: Mapping[str, Any], default_caps: frozenset[str],
              source: Path, is_mirror: bool) -> Endpoint:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{source}: {url!r} is not an http(s) URL")
    override = _bool(settings, "override_path", source)
    path = parts.path.rstrip("/")
    if not override and not path.endswith("/v2"):
        path = f"{path}/v2"
    return Endpoint(
        scheme=parts.scheme,
        host=parts.netloc,
        api_root=path,
        capabilities=_capabilities(settings, default_caps, source),
        ca_files=_ca_files(settings, source),
        skip_verify=_bool(settings, "skip_verify", source),
        headers=_headers(settings, source),
        is_mirror=is_mirror,
    )


def _bool(settings: Mapping[str, Any], key: str, source: Path) -> bool:
    value = settings.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false")
    return value


def _capabilities(settings: Mapping[str, Any], default: frozenset[str],
                  source: Path) -> frozenset[str]:
    caps = settings.get("capabilities")
    if caps is None:
        return default
    if not isinstance(caps, list) or not all(c in ALL_CAPABILITIES for c in caps):
        raise ConfigError(f"{source}: capabilities must be a list of pull, resolve, push")
    return frozenset(caps)


def _ca_files(settings: Mapping[str, Any], source: Path) -> tuple[Path, ...]:
    ca = settings.get("ca")
    if ca is None:
        return ()
    names = [ca] if isinstance(ca, str) else ca
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: ca must be a path or a list of paths")
    # Relative CA paths are relative to the hosts.toml that names them.
    return tuple(Path(n) if Path(n).is_absolute() else source.parent / n for n in names)


def _headers(settings: Mapping[str, Any], source: Path) -> tuple[tuple[str, str], ...]:
    headers = settings.get("header", {})
    if not isinstance(headers, dict):
        raise ConfigError(f"{source}: header must be a table")
    pairs: list[tuple[str, str]] = []
    for key, value in headers.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{source}: header {key!r} must be a string or list of strings")
        pairs.extend((key, v) for v in values)
    return tuple(pairs)


def _http_host_port(netloc: str) -> tuple[str, int]:
    """``h`` and ``h:80`` are one plain-HTTP host; names compare case-insensitively."""
    parts = urlsplit(f"http://{netloc}")
    try:
        port = parts.port or 80
    except ValueError:
        port = -1  # a malformed port matches nothing configured
    return (parts.hostname or "", port)


def is_localhost(registry: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port (not a name that merely
    starts like one, such as ``127.0.0.1.example``)."""
    host = urlsplit(f"http://{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
