"""OCI distribution client: references, hosts/mirrors, auth, manifests, blobs, ranges, uploads."""

from stargz.registry.client import RegistryClient
from stargz.registry.credentials import Credentials, CredentialStore
from stargz.registry.hosts import Endpoint, HostsConfig
from stargz.registry.layout import OCILayout
from stargz.registry.manifest import Descriptor, Manifest, Platform
from stargz.registry.reference import Reference
from stargz.registry.retry import RetryPolicy

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
