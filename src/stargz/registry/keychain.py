"""Credentials handed to this process at run time, per registry host (the CRI keychain's store).

The snapshotter's CRI proxy (``stargz.cri.proxy``) puts here the credentials kubelet sends with
each PullImage, under the image's registry host; every :class:`CredentialStore` of the process
asks here first, so the lazy layers of that image read their blobs with them. In memory only,
never written anywhere; a later pull with credentials for the same host replaces them.
"""

from __future__ import annotations

import threading

from stargz.registry.credentials import Credentials, normalize_host


class HostKeychain:
    """Thread-safe host -> Credentials (the proxy's loop writes, the lazy layers' loop reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, Credentials] = {}

    def __repr__(self) -> str:
        with self._lock:
            return f"HostKeychain(hosts={sorted(self._by_host)})"

    def get(self, host: str) -> Credentials | None:
        with self._lock:
            return self._by_host.get(normalize_host(host))

    def put(self, host: str, credentials: Credentials) -> Credentials | None:
        """Keep ``credentials`` for ``host``; the ones they replace (None: there were none)."""
        with self._lock:
            key = normalize_host(host)
            previous = self._by_host.get(key)
            self._by_host[key] = credentials
            return previous

    def restore(self, host: str, put: Credentials, previous: Credentials | None) -> None:
        """Undo :meth:`put` of ``put`` (a failed pull's), unless another pull replaced it."""
        with self._lock:
            key = normalize_host(host)
            if self._by_host.get(key) is not put:
                return
            if previous is None:
                del self._by_host[key]
            else:
                self._by_host[key] = previous

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(self._by_host)


_PROCESS_KEYCHAIN = HostKeychain()


def process_keychain() -> HostKeychain:
    """The process's keychain: empty unless a CRI proxy runs in this process."""
    return _PROCESS_KEYCHAIN
