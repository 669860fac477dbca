"""Retries with exponential backoff and jitter for resets, timeouts, 5xx and 429."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from stargz.errors import TransportError

log = logging.getLogger("stargz.registry")
T = TypeVar("T")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class RetryableStatus(Exception):
    """An answer worth asking again for (5xx, 429); carries the Retry-After hint in seconds."""

    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.retry_after = retry_after


class ShortBody(Exception):
    """The connection ended before the body announced by the headers was complete."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    initial_backoff: float = 0.03  # seconds before the first retry; doubles each time
    max_backoff: float = 2.0
    max_retry_after: float = 10.0  # cap on a server's Retry-After
    timeout: float = 30.0  # connect / read / write timeout per request

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_backoff, self.initial_backoff * 2.0 ** attempt)
        # Jitter in [ceiling/2, ceiling] so that clients retrying together spread out.
        jitter: float = random.random()
        return ceiling / 2 + jitter * ceiling / 2

    async def run(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it succeeds or fails ``max_retries`` retries; then
        raise TransportError naming ``what`` and the last failure."""
        attempt = 0
        while True:
            try:
                return await operation()
            except (httpx.TransportError, RetryableStatus, ShortBody) as err:
                if is_tls_failure(err):
                    raise TransportError(f"{what}: TLS verification failed ({describe(err)}); "
                                         "configure the CA in hosts.toml") from None
                if speaks_plain_http(err):  # a retry would only get the same answer
                    raise TransportError(
                        f"{what}: {describe(err)}: the registry answered in plain HTTP; for a "
                        "plain-HTTP registry use --plain-http (or server = \"http://HOST\" in "
                        "its hosts.toml; the snapshotter: [lazy] plain_http)") from None
                if attempt >= self.max_retries:
                    raise TransportError(f"{what}: {describe(err)} "
                                         f"(gave up after {attempt + 1} attempts)") from None
                hint = err.retry_after if isinstance(err, RetryableStatus) else None
                delay = self.backoff(attempt, hint)
                log.debug("%s: %s, retrying in %.3f s", what, describe(err), delay)
                attempt += 1
                await asyncio.sleep(delay)


def is_tls_failure(err: BaseException) -> bool:
    """A certificate that does not verify will not verify on a retry either."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(err)


def speaks_plain_http(err: BaseException) -> bool:
    """A TLS handshake answered by a plain-HTTP server (OpenSSL's WRONG_VERSION_NUMBER)."""
    return "WRONG_VERSION_NUMBER" in str(err)


def describe(err: BaseException) -> str:
    """One line about a failure, without URLs' query strings (signed URLs carry secrets)."""
    if isinstance(err, httpx.TimeoutException):
        return f"timed out ({type(err).__name__})"
    if isinstance(err, httpx.TransportError):
        detail = str(err).split("\n", 1)[0] or type(err).__name__
        return f"connection failed ({type(err).__name__}: {detail})"
    return str(err).split("\n", 1)[0] or type(err).__name__


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
