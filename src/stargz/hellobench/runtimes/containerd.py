"""containerd runtimes: a plain full pull (overlayfs), and lazy pulls through a remote
snapshotter behind the ``stargz`` proxy plugin, ours or the Go stargzd. Phases as the reference's
HelloBench: ``ctr images pull`` / ``ctr-remote images rpull``, ``ctr containers create``, and
``ctr task start`` until the workload's ready line."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from stargz.hellobench.daemons import (
    PROXY_NAME,
    Containerd,
    GoSnapshotterProcess,
    SnapshotterProcess,
)
from stargz.hellobench.model import PushedVariant, Workload
from stargz.hellobench.runtimes.common import (
    CONTAINER,
    ColdRuntime,
    PhaseCommands,
    env_flags,
    image_reference,
    measure_phases,
)

Snapshotter = Literal["overlayfs", "ours", "go"]


class ContainerdRuntime(ColdRuntime):
    """containerd with ``snapshotter``: containerd's overlayfs (a full pull), our snapshotter
    (``stargz.snapshotter.daemon``) or the Go stargzd (``stargzd`` binary)."""

    def __init__(self, name: str, workdir: Path, snapshotter: Snapshotter,
                 stargzd: Path | None = None) -> None:
        super().__init__(name, workdir)
        self.snapshotter_kind = snapshotter
        self.stargzd = stargzd
        self.snapshotter: SnapshotterProcess | None = None
        self.containerd: Containerd | None = None
        self.sockets: Path | None = None

    def start_daemons(self, work: Path) -> None:
        # the sockets in a short directory of their own: unix socket paths fit in 108 bytes
        self.sockets = Path(tempfile.mkdtemp(prefix="hellobench-"))
        sock = self.sockets / "snapshotter.sock"
        if self.snapshotter_kind != "overlayfs":  # first: containerd's gRPC backoff
            self.snapshotter = self._snapshotter(work, sock)
            self.snapshotter.start()
        self.containerd = Containerd(work / "containerd", sock,
                                     address=self.sockets / "containerd.sock")
        self.containerd.start()

    def _snapshotter(self, work: Path, sock: Path) -> SnapshotterProcess:
        root, log = work / "snapshotter-root", work / "snapshotter.log"
        if self.snapshotter_kind == "ours":  # info: debug lines per read would slow it
            return SnapshotterProcess(sock, root, log, log_level="info", wait_ready=True)
        assert self.stargzd is not None
        return GoSnapshotterProcess(self.stargzd, sock, root, log)

    def run(self, variant: PushedVariant, workload: Workload) -> Mapping[str, float]:
        assert self.containerd is not None, "start() first"
        env = self.containerd.env()
        image = image_reference(self.host, variant)
        lazy = self.snapshotter_kind != "overlayfs"
        pull = (["ctr-remote", "images", "rpull"] if lazy else ["ctr", "images", "pull"])
        create = ["ctr", "containers", "create"]
        if lazy:
            create += ["--snapshotter", PROXY_NAME]
        create += [*env_flags("--env", workload), "--cwd", workload.cwd, image, CONTAINER,
                   "--", *workload.argv]  # after "--": else ctr takes -c for its --config
        seconds, self.output = measure_phases(PhaseCommands(
            pull=[*pull, "--plain-http", image], create=create,
            start=["ctr", "task", "start", CONTAINER],
            kill=["ctr", "task", "kill", "-s", "KILL", CONTAINER],
            remove=(["ctr", "task", "delete", "--force", CONTAINER],
                    ["ctr", "containers", "delete", CONTAINER])), env, workload.ready_line)
        return seconds

    def stop_daemons(self) -> None:
        """containerd, then the snapshotter (by PID), then their sockets."""
        if self.containerd is not None:
            self.containerd.stop()
            self.containerd = None
        if self.snapshotter is not None:
            self.snapshotter.stop()
            self.snapshotter = None
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)
            self.sockets = None
