"""The six HelloBench runtimes (``model.RUNTIMES``), each a ``model.Runtime``: containerd and
podman, each with a full pull, with our lazy layer service and with the Go reference's.

    runtime = create_runtime("containerd-ours", work / "containerd-ours", peers=None)
    runtime.start(link.host)               # cold: empty roots, fresh daemons, page cache dropped
    seconds = runtime.run(variant, image.workload)   # {"pull": s, "create": s, "run": s}
    runtime.stop()                          # every process it started, by PID
"""

from __future__ import annotations

from pathlib import Path

from stargz.errors import ConfigError
from stargz.hellobench.model import RUNTIMES, Runtime
from stargz.hellobench.runtimes.containerd import ContainerdRuntime, Snapshotter
from stargz.hellobench.runtimes.podman import PodmanRuntime, Store

__all__ = ["ContainerdRuntime", "PodmanRuntime", "available_runtimes", "create_runtime",
           "peer_binary"]

CONTAINERD_SNAPSHOTTERS: dict[str, Snapshotter] = {
    "containerd-full": "overlayfs", "containerd-ours": "ours", "containerd-go": "go"}
PODMAN_STORES: dict[str, Store] = {"podman-full": "none", "podman-ours": "ours", "podman-go": "go"}
# the Go peers' binaries, as ../shared/peers/build.sh names them
PEER_BINARIES = {"containerd-go": "stargzd", "podman-go": "stargzstore"}


def peer_binary(name: str, peers: Path | None) -> Path | None:
    """The Go binary runtime ``name`` needs from ``peers`` (None: it needs none)."""
    if name not in PEER_BINARIES:
        return None
    if peers is None:
        raise ConfigError(f"runtime {name} needs the Go peers: --peers DIR")
    binary = peers / PEER_BINARIES[name]
    if not binary.is_file():
        raise ConfigError(f"runtime {name} needs {binary} (bash ../shared/peers/build.sh DIR)")
    return binary


def available_runtimes(peers: Path | None) -> tuple[str, ...]:
    """The runtimes that can run here: the Go ones only when ``peers`` holds their binary."""
    return tuple(name for name in RUNTIMES if name not in PEER_BINARIES
                 or (peers is not None and (peers / PEER_BINARIES[name]).is_file()))


def create_runtime(name: str, workdir: Path, peers: Path | None = None) -> Runtime:
    """Runtime ``name`` (one of ``model.RUNTIMES``), working under ``workdir``."""
    binary = peer_binary(name, peers)
    if name in CONTAINERD_SNAPSHOTTERS:
        return ContainerdRuntime(name, workdir, CONTAINERD_SNAPSHOTTERS[name], stargzd=binary)
    if name in PODMAN_STORES:
        return PodmanRuntime(name, workdir, PODMAN_STORES[name], go_store=binary)
    raise ConfigError(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")
