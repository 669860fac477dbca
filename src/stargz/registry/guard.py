"""Where credentials may go: the checks every registry request passes.

``same_origin`` decides which requests of an exchange carry a registry's Authorization (its own
scheme, host and port only: never a redirect target or upload location elsewhere, never an
https->http downgrade). ``refuse_cleartext_credentials`` is a request hook on every HTTP client
the session makes, so no request can skip it: credentials (an Authorization header, or a
password or refresh token in a token form) never go over plain HTTP to a host that is not
configured as plain HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import httpx

from stargz.errors import AuthError
from stargz.registry.hosts import Endpoint, HostsConfig

# Headers that hold a secret of the host they were set for: dropped on a hop to another origin.
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization"})
_FORM_SECRETS = frozenset({"password", "refresh_token"})
RequestHook = Callable[[httpx.Request], Awaitable[None]]


def same_origin(url: httpx.URL, endpoint: Endpoint) -> bool:
    """Whether ``url`` is on ``endpoint``'s own scheme, host and port."""
    base = httpx.URL(endpoint.base_url)
    return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)


def carries_credentials(request: httpx.Request) -> bool:
    if any(name in request.headers for name in SENSITIVE_HEADERS):
        return True
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return False
    try:
        form = parse_qs(request.content.decode(errors="replace"))
    except httpx.RequestNotRead:
        return True  # a streamed form we can not inspect: treat it as secret
    return bool(_FORM_SECRETS & form.keys())


def cleartext_allowed(hosts: HostsConfig, url: httpx.URL) -> bool:
    """Whether credentials may be sent to ``url``: over TLS, or to a plain-HTTP host."""
    return url.scheme == "https" or hosts.plain_http_allowed(str(url))


def refuse_cleartext_credentials(hosts: HostsConfig) -> RequestHook:
    async def check(request: httpx.Request) -> None:
        if carries_credentials(request) and not cleartext_allowed(hosts, request.url):
            raise AuthError(f"refusing to send credentials to {request.url.netloc.decode()} "
                            "over plain HTTP: it is not configured as a plain-HTTP host")

    return check
