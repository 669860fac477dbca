"""One HTTP exchange with a registry endpoint: TLS per endpoint, auth, redirects, error mapping.

Retries live one level up (``RetryPolicy.run`` around a whole exchange, body included), so a
retried read starts over instead of returning what a broken connection left behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from stargz.errors import AuthError, NotFoundError, RegistryError, StargzError
from stargz.registry.auth import Authorizer
from stargz.registry.credentials import CredentialStore
from stargz.registry.guard import SENSITIVE_HEADERS, refuse_cleartext_credentials, same_origin
from stargz.registry.hosts import Endpoint, HostsConfig, verifying_context
from stargz.registry.retry import RETRYABLE_STATUS, RetryableStatus, RetryPolicy, parse_retry_after

log = logging.getLogger("stargz.registry")
# A body: bytes, or a factory of async byte streams (called again when a request is re-sent).
Body = bytes | Callable[[], AsyncIterator[bytes]] | None
MAX_REDIRECTS = 5
USER_AGENT = "stargz/0.1"


def warm_up() -> None:
    """Load now what a process's first request would (httpcore, h11 and the async backend
    are imported by httpx on first use, the trust store is read at the first client): call
    it on a thread at start, so the first pull does not pay for it (70-120 ms measured)."""
    try:
        import h11  # noqa: F401  (imported for its side effect: loaded once per process)
        import httpcore._async.http11
        import httpcore._backends.anyio  # noqa: F401

        httpx.AsyncHTTPTransport(verify=verifying_context(()))
    except Exception as err:  # the first request then loads it, and says what is wrong
        log.debug("warming up the HTTP client failed: %s", err)


class Session:
    """HTTP clients (one per TLS setting) and the authorizer they share."""

    def __init__(self, credentials: CredentialStore, retry: RetryPolicy, hosts: HostsConfig,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry
        self.authorizer = Authorizer(credentials, retry, hosts)
        self._hooks = {"request": [refuse_cleartext_credentials(hosts)]}
        self._transport = transport
        self._clients: dict[object, httpx.AsyncClient] = {}

    def __repr__(self) -> str:
        return f"Session(clients={len(self._clients)})"

    def client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        key = "injected" if self._transport is not None else endpoint.tls_key
        client = self._clients.get(key)
        if client is None:
            seconds = endpoint.request_timeout or self.retry.timeout
            timeout = httpx.Timeout(seconds if seconds > 0 else None)
            # identity: blob bytes must arrive as stored, never re-encoded in transit.
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if self._transport is not None:
                client = httpx.AsyncClient(transport=self._transport, timeout=timeout,
                                           headers=headers, event_hooks=self._hooks)
            else:
                client = httpx.AsyncClient(verify=endpoint.ssl_context(), timeout=timeout,
                                           headers=headers, event_hooks=self._hooks)
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def send(self, endpoint: Endpoint, method: str, url: str, *,
                   scopes: tuple[str, ...], headers: Mapping[str, str] | None = None,
                   content: Body = None, stream: bool = False,
                   authorize: bool = True) -> httpx.Response:
        """Send one request with auth and redirects. 5xx/429 raise RetryableStatus; any other
        answer is returned (streamed when asked: the caller must close it)."""
        client = self.client(endpoint)
        all_headers = dict(endpoint.headers)
        all_headers.update(headers or {})
        auth = await self.authorizer.header(client, endpoint, scopes) if authorize else None
        response = await self._send_following(client, endpoint, method, url, all_headers, auth,
                                              content, stream)
        # Only the registry's own 401 is a challenge: one from a storage URL it redirected to
        # must not steer where the registry's credentials go.
        if (response.status_code == 401 and authorize
                and same_origin(response.url, endpoint)):
            await response.aclose()
            auth = await self.authorizer.on_unauthorized(client, endpoint, scopes, response,
                                                         auth)
            response = await self._send_following(client, endpoint, method, url, all_headers,
                                                  auth, content, stream)
        if response.status_code in RETRYABLE_STATUS:
            await response.aclose()
            raise RetryableStatus(response.status_code, _strip_query(str(response.url)),
                                  parse_retry_after(response.headers.get("retry-after")))
        return response

    async def _send_following(self, client: httpx.AsyncClient, endpoint: Endpoint,
                              method: str, url: str, headers: dict[str, str], auth: str | None,
                              content: Body, stream: bool) -> httpx.Response:
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = _headers_for(httpx.URL(url), endpoint, headers, auth)
            body = content() if callable(content) else content
            request = client.build_request(method, url, headers=request_headers, content=body)
            log.debug("%s %s", method, _strip_query(url))
            response = await client.send(request, stream=True)
            if response.status_code not in (301, 302, 303, 307, 308) or method not in (
                    "GET", "HEAD"):
                break
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise RegistryError(f"redirect without a Location from {_strip_query(url)}")
            url = str(response.url.join(location))
        else:
            raise RegistryError(f"too many redirects from {_strip_query(url)}")
        if not stream:
            await response.aread()
        return response


def _headers_for(url: httpx.URL, endpoint: Endpoint, headers: dict[str, str],
                 auth: str | None) -> dict[str, str]:
    """Credentials go only to the registry endpoint itself (scheme, host and port): never to
    a storage URL or upload location elsewhere, never over a downgrade to plain HTTP."""
    if not same_origin(url, endpoint):
        return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}
    found = dict(headers)
    if auth:
        found["Authorization"] = auth
    return found


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


def registry_error(response: httpx.Response, what: str) -> StargzError:
    """The error for a failed answer, with the registry's code and message, on one line.
    Call only after the body was read (or on a HEAD answer)."""
    status = response.status_code
    code, message = _error_details(response)
    detail = f"{code}: {message} (HTTP {status})" if code else f"HTTP {status}"  # status once
    text = " ".join(f"{what}: {detail}".split())[:500]
    if status in (401, 403):
        return AuthError(text)
    if status == 404:
        return NotFoundError(text)
    return RegistryError(text)


def _error_details(response: httpx.Response) -> tuple[str, str]:
    try:
        errors = json.loads(response.content).get("errors") or []
        first = errors[0]
        return str(first.get("code") or ""), str(first.get("message") or "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, IndexError, TypeError,
            httpx.ResponseNotRead):
        return "", ""
