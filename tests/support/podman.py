"""podman 4.3 with its own storage and config under a test directory (RECIPES.md: runc,
cgroupfs, file events, raised ulimits), optionally with an additional layer store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "{runroot}"
graphroot = "{graphroot}"
{options}"""


class Podman:
    """podman (and buildah, which reads the same configuration) with ``extra_env`` added to
    their environment (XDG_RUNTIME_DIR, REGISTRY_AUTH_FILE...)."""

    def __init__(self, workdir: Path, layer_store: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        self.containers_conf = workdir / "containers.conf"
        # a libpod tmp dir of its own (default /run/libpod, shared by every podman on the machine:
        # its exit files and locks made runs wait 20 s for another podman's containers)
        self.containers_conf.write_text(CONTAINERS_CONF.format(events=workdir / "events.log",
                                                               tmp=workdir / "libpod-tmp"))
        options = ""
        if layer_store is not None:
            options = f'[storage.options]\nadditionallayerstores = ["{layer_store}:ref"]\n'
        self.storage_conf = workdir / "storage.conf"
        self.storage_conf.write_text(STORAGE_CONF.format(
            runroot=workdir / "run", graphroot=workdir / "graph", options=options))

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf), **self.extra_env}

    def podman(self, *args: str, timeout: float = 300,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._tool("podman", args, timeout, stdin)

    def buildah(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._tool("buildah", args, timeout, None)

    def _tool(self, tool: str, args: tuple[str, ...], timeout: float,
              stdin: str | None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([tool, *args], env=self.env(), capture_output=True, text=True,
                                timeout=timeout, input=stdin)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def run(self, *args: str) -> str:
        return self.podman("run", *args).stdout

    def reset(self) -> None:
        subprocess.run(["podman", "system", "reset", "--force"], env=self.env(),
                       capture_output=True, timeout=120)
