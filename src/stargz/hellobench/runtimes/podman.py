"""podman runtimes: a plain pull, and pulls whose eStargz layers come from an additional layer
store, ours (``stargz store``) or the Go stargzstore. Phases as the containerd ones: ``podman
pull``, ``podman create``, and ``podman start --attach`` until the workload's ready line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from stargz.hellobench.daemons_podman import GoStoreProcess, Podman, StoreProcess
from stargz.hellobench.model import PushedVariant, Workload
from stargz.hellobench.runtimes.common import (
    CONTAINER,
    ColdRuntime,
    PhaseCommands,
    env_flags,
    image_reference,
    measure_phases,
)

Store = Literal["none", "ours", "go"]


class PodmanRuntime(ColdRuntime):
    """podman with its own storage, and with ``store`` as its additional layer store (``none``:
    every layer pulled in full)."""

    def __init__(self, name: str, workdir: Path, store: Store,
                 go_store: Path | None = None) -> None:
        super().__init__(name, workdir)
        self.store_kind = store
        self.go_store = go_store
        self.store: StoreProcess | GoStoreProcess | None = None
        self.podman: Podman | None = None

    def start_daemons(self, work: Path) -> None:
        if self.store_kind == "ours":  # info: debug lines per read would slow it
            self.store = StoreProcess(work / "store", work / "store-root", work / "store.log",
                                      log_level="info")
        elif self.store_kind == "go":
            assert self.go_store is not None
            self.store = GoStoreProcess(work / "store", work / "store-root", work / "store.log",
                                        self.go_store)
        if self.store is not None:
            self.store.start()
        self.podman = Podman(work / "podman",
                             layer_store=self.store.mountpoint if self.store else None)

    def run(self, variant: PushedVariant, workload: Workload) -> Mapping[str, float]:
        assert self.podman is not None, "start() first"
        env = self.podman.env()
        image = image_reference(self.host, variant)
        pull = ["podman", "pull", "--quiet", "--tls-verify=false", image]
        create = ["podman", "create", "--name", CONTAINER, "--network", "none",
                  *env_flags("--env", workload), "--workdir", workload.cwd, image,
                  *workload.argv]
        seconds, self.output = measure_phases(PhaseCommands(
            pull=pull, create=create, start=["podman", "start", "--attach", CONTAINER],
            kill=["podman", "kill", "--signal", "KILL", CONTAINER],
            remove=(["podman", "rm", "--force", CONTAINER],)), env, workload.ready_line)
        return seconds

    def stop_daemons(self) -> None:
        """podman's storage reset, then the store (by PID)."""
        if self.podman is not None:
            self.podman.reset()
            self.podman = None
        if self.store is not None:
            self.store.stop()
            self.store = None
