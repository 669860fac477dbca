"""Registry authorization: parse WWW-Authenticate challenges, answer Basic ones with credentials
and Bearer ones with tokens from the realm (OAuth2 POST as containerd does, GET as docker does),
cached per host and scope set until they expire.

Every secret used here is the challenged registry's own (looked up by its host); a token realm,
even on another host, gets that registry's credentials (Docker Hub's realm is elsewhere, and
containerd and docker do the same), but never over plain HTTP unless the realm's host is
configured as plain HTTP: then the token is asked for anonymously."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from stargz.errors import AuthError
from stargz.registry.credentials import Credentials, CredentialStore
from stargz.registry.guard import cleartext_allowed
from stargz.registry.hosts import Endpoint, HostsConfig
from stargz.registry.retry import RetryableStatus, RetryPolicy, parse_retry_after

log = logging.getLogger("stargz.registry")
CLIENT_ID = "stargz"
DEFAULT_TOKEN_LIFETIME = 60  # seconds, the distribution spec's default for expires_in
_EXPIRY_MARGIN = 10.0
_POST_FALLBACK_STATUS = frozenset({400, 404, 405})
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parse WWW-Authenticate values such as ``Bearer realm="...",service="...",scope="..."``."""
    found = []
    for header in headers:
        rest = header.strip()
        while rest:
            scheme, _, rest = rest.partition(" ")
            params: dict[str, str] = {}
            while (match := _PARAM.match(rest)) is not None and match.end() > 0:
                value = match[2] if match[2] is not None else match[3]
                params[match[1].lower()] = re.sub(r"\\(.)", r"\1", value)
                rest = rest[match.end():]
            found.append(Challenge(scheme.lower().strip(","), params))
            rest = rest.strip()
    return found


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


@dataclass
class _Token:
    value: str
    expires_at: float


class Authorizer:
    """What each host asked for and the tokens obtained; produces Authorization headers."""

    def __init__(self, credentials: CredentialStore, retry: RetryPolicy,
                 hosts: HostsConfig) -> None:
        self._credentials = credentials
        self._retry = retry
        self._hosts = hosts
        self._withheld: set[str] = set()  # realms warned about (plain HTTP, not configured)
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        # One token fetch per host and scope set at a time; the others wait and reuse it.
        self._locks: dict[tuple[str, tuple[str, ...]], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"Authorizer(hosts={sorted(self._challenges)})"

    async def header(self, client: httpx.AsyncClient, endpoint: Endpoint,
                     scopes: tuple[str, ...]) -> str | None:
        """The header for a request, fetching a token first when the host is known to want one."""
        challenge = self._challenges.get(endpoint.host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = await self._credentials.get(endpoint.host)
            return creds.basic_header() if creds else None
        key = (endpoint.host, tuple(sorted(set(scopes))))
        async with self._locks.setdefault(key, asyncio.Lock()):
            token = self._valid_token(key)
            if token is None:
                token = await self._fetch_token(client, endpoint, challenge, key[1])
                self._tokens[key] = token
        return f"Bearer {token.value}"

    def _valid_token(self, key: tuple[str, tuple[str, ...]]) -> _Token | None:
        token = self._tokens.get(key)
        return token if token is not None and token.expires_at > time.monotonic() else None

    async def on_unauthorized(self, client: httpx.AsyncClient, endpoint: Endpoint,
                              scopes: tuple[str, ...], response: httpx.Response,
                              sent: str | None) -> str:
        """Learn from a 401 and return the header to retry with; AuthError if there is none."""
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not usable:
            raise AuthError(f"{endpoint.host} answered 401 without a usable auth challenge")
        challenge = next((c for c in usable if c.scheme == "bearer"), usable[0])
        self._challenges[endpoint.host] = challenge
        if challenge.scheme == "basic":
            creds = await self._credentials.get(endpoint.host)
            if creds is None:
                raise AuthError(f"{endpoint.host} requires credentials (basic auth) "
                                "and none are configured")
            return creds.basic_header()
        key = (endpoint.host, tuple(sorted(set(scopes))))
        async with self._locks.setdefault(key, asyncio.Lock()):
            token = self._valid_token(key)
            if token is None or f"Bearer {token.value}" == sent:
                # Ask for the union of our scopes and the challenge's, and file it under ours.
                wanted = set(scopes) | set(challenge.params.get("scope", "").split())
                token = await self._fetch_token(client, endpoint, challenge,
                                                tuple(sorted(wanted)))
                self._tokens[key] = token
        return f"Bearer {token.value}"

    async def _fetch_token(self, client: httpx.AsyncClient, endpoint: Endpoint,
                           challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise AuthError(f"{endpoint.host} sent a bearer challenge without a usable realm")
        service = challenge.params.get("service", "")
        creds = await self._token_credentials(endpoint, realm)
        what = f"token for {endpoint.host} from {realm}"

        async def fetch() -> httpx.Response:
            if creds is not None:
                response = await _post_token(client, realm, service, scopes, creds)
                if response.status_code not in _POST_FALLBACK_STATUS or creds.identity_token:
                    return _check_retryable(response, realm)
            return _check_retryable(await _get_token(client, realm, service, scopes, creds), realm)

        response = await self._retry.run(what, fetch)
        if response.status_code in (401, 403):
            who = "the configured credentials" if creds else "anonymous access"
            if realm in self._withheld:
                who += " (credentials withheld: the realm is plain HTTP)"
            raise AuthError(f"token service {realm} refused {who} for {endpoint.host} "
                            f"(HTTP {response.status_code})")
        if response.status_code != 200:
            raise AuthError(f"token service {realm} answered HTTP {response.status_code} "
                            f"for {endpoint.host}")
        return _parse_token(response.content, realm)

    async def _token_credentials(self, endpoint: Endpoint, realm: str) -> Credentials | None:
        """The challenged registry's credentials, unless the realm would get them in clear."""
        creds = await self._credentials.get(endpoint.host)
        if creds is None or cleartext_allowed(self._hosts, httpx.URL(realm)):
            return creds
        if realm not in self._withheld:
            self._withheld.add(realm)
            log.warning("not sending the credentials of %s to its token service %s: plain HTTP "
                        "to a host not configured as plain HTTP; asking anonymously",
                        endpoint.host, realm)
        return None


def _check_retryable(response: httpx.Response, realm: str) -> httpx.Response:
    if response.status_code in (429, 500, 502, 503, 504):
        raise RetryableStatus(response.status_code, realm,
                              parse_retry_after(response.headers.get("retry-after")))
    return response


async def _post_token(client: httpx.AsyncClient, realm: str, service: str,
                      scopes: tuple[str, ...], creds: Credentials) -> httpx.Response:
    form = {"service": service, "client_id": CLIENT_ID, "scope": " ".join(scopes)}
    if creds.identity_token:
        form.update(grant_type="refresh_token", refresh_token=creds.secret)
    else:
        form.update(grant_type="password", username=creds.username, password=creds.secret)
    return await client.post(realm, data=form)


async def _get_token(client: httpx.AsyncClient, realm: str, service: str,
                     scopes: tuple[str, ...], creds: Credentials | None) -> httpx.Response:
    params = urlencode([("service", service)] + [("scope", s) for s in scopes])
    headers = {"Authorization": creds.basic_header()} if creds else {}
    return await client.get(realm, params=params, headers=headers)


def _parse_token(body: bytes, realm: str) -> _Token:
    try:
        data = json.loads(body)
        value = data.get("token") or data.get("access_token")
        lifetime = int(data.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
        raise AuthError(f"token service {realm} sent an unreadable answer") from None
    if not isinstance(value, str) or not value:
        raise AuthError(f"token service {realm} sent no token")
    margin = min(_EXPIRY_MARGIN, lifetime / 10)
    return _Token(value, time.monotonic() + lifetime - margin)
