"""Additional layer stores for podman tests and benchmarks: ours (``stargz store``, a subprocess)
and the Go reference's (``stargzstore`` from ../shared/peers), each stopped by its own PID. They
live in stargz.hellobench.daemons_podman; ours here runs with this checkout on PYTHONPATH.

    store = StoreProcess(tmp / "store", tmp / "store-root", tmp / "store.log"); store.start()
    podman = Podman(tmp / "podman", layer_store=store.mountpoint)
    ...
    store.stop()
"""

from __future__ import annotations

from stargz.hellobench import daemons_podman
from stargz.hellobench.daemons_podman import GO_STORE, GoStoreProcess, detach
from tests.support.containerd import REPO

__all__ = ["GO_STORE", "GoStoreProcess", "StoreProcess", "detach"]


class StoreProcess(daemons_podman.StoreProcess):
    """The package's, importing from this checkout (as the tests do)."""

    pythonpath = (str(REPO),)
