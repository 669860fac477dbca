"""podman 4.3 with its own storage and config under a test directory, optionally with an
additional layer store: the package's (stargz.hellobench.daemons_podman), re-exported here."""

from stargz.hellobench.daemons_podman import CONTAINERS_CONF, STORAGE_CONF, Podman

__all__ = ["CONTAINERS_CONF", "STORAGE_CONF", "Podman"]
