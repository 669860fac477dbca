"""OCI distribution client: references, hosts/mirrors, auth, manifests, blobs, ranges, uploads.

The names below load with their submodule on first use (PEP 562), so importing one submodule
(``stargz.registry.reference``, say) does not load the HTTP client: the snapshotter's start
path imports a few small ones before its socket is up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stargz.registry.client import RegistryClient
    from stargz.registry.credentials import Credentials, CredentialStore
    from stargz.registry.hosts import Endpoint, HostsConfig
    from stargz.registry.layout import OCILayout
    from stargz.registry.manifest import Descriptor, Manifest, Platform
    from stargz.registry.reference import Reference
    from stargz.registry.retry import RetryPolicy

_SUBMODULE_OF = {
    "RegistryClient": "client",
    "Credentials": "credentials",
    "CredentialStore": "credentials",
    "Endpoint": "hosts",
    "HostsConfig": "hosts",
    "OCILayout": "layout",
    "Descriptor": "manifest",
    "Manifest": "manifest",
    "Platform": "manifest",
    "Reference": "reference",
    "RetryPolicy": "retry",
}

__all__ = [
    "CredentialStore",
    "Credentials",
    "Descriptor",
    "Endpoint",
    "HostsConfig",
    "Manifest",
    "OCILayout",
    "Platform",
    "Reference",
    "RegistryClient",
    "RetryPolicy",
]


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # found directly next time
    return value
