"""What every HelloBench runtime shares: a cold working directory, timed commands, and the
attached run that ends at the workload's ready line."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import RuntimeIntegrationError
from stargz.hellobench.daemons import command_failed, detach_mounts_under, drop_page_cache
from stargz.hellobench.model import PushedVariant, Workload

STEP_TIMEOUT_S = 900.0  # one phase; a large image over a slow link takes minutes
KILL_WAIT_S = 30.0
CONTAINER = "hellobench"
OUTPUT_KEPT = 200  # lines of the workload's output kept for the caller


def cold_directory(path: Path) -> Path:
    """``path`` empty (mounts a killed daemon left detached first) and the page cache dropped:
    a sample starts with nothing on disk or in memory from the previous one."""
    discard_directory(path)
    path.mkdir(parents=True)
    drop_page_cache()
    return path


def discard_directory(path: Path) -> None:
    if path.exists():
        detach_mounts_under(path)
        shutil.rmtree(path, ignore_errors=True)


def image_reference(host: str, variant: PushedVariant) -> str:
    return f"{host}/{variant.repository}:{variant.tag}"


def timed_command(argv: Sequence[str], env: dict[str, str]) -> float:
    """Wall seconds of one command that must succeed."""
    started = time.perf_counter()
    result = subprocess.run(list(argv), env=env, capture_output=True, text=True,
                            timeout=STEP_TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise command_failed(argv, result.returncode, result.stdout + result.stderr)
    return elapsed


def quiet_command(argv: Sequence[str], env: dict[str, str]) -> None:
    """A clean-up command whose failure (nothing left to clean) does not matter."""
    subprocess.run(list(argv), env=env, capture_output=True, timeout=KILL_WAIT_S * 2,
                   check=False)


class AttachedRun:
    """A container's start command, attached to its output (stdout and stderr merged); the
    run phase ends at the first line holding the workload's ready line. Server workloads never
    exit: ``close`` kills the container (``kill``) and reaps the command."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")

    def until(self, ready_line: str) -> float:
        """Seconds from the start until ``ready_line`` appeared in the output."""
        assert self.proc.stdout is not None
        watchdog = threading.Timer(STEP_TIMEOUT_S, self.proc.kill)
        watchdog.start()
        try:
            for line in self.proc.stdout:
                self.lines = [*self.lines[-OUTPUT_KEPT + 1:], line.rstrip("\n")]
                if ready_line in line:
                    return time.perf_counter() - self.started
        finally:
            watchdog.cancel()
        code = self.proc.wait()
        said = " ".join(" ".join(self.lines).split())[-400:]
        raise RuntimeIntegrationError(f"{' '.join(self.argv)} exited {code} before printing "
                                      f"{ready_line!r}: {said}")

    def close(self, kill: Callable[[], None]) -> None:
        if self.proc.poll() is None:
            kill()
        try:
            self.proc.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def env_flags(flag: str, workload: Workload) -> list[str]:
    """``--env K=V`` for each of the workload's variables."""
    return [arg for pair in workload.env for arg in (flag, pair)]


@dataclass(frozen=True)
class PhaseCommands:
    """One runtime's commands for a sample: the three timed phases, then the clean-up."""

    pull: list[str]
    create: list[str]
    start: list[str]  # attached to the container's output
    kill: list[str]
    remove: tuple[list[str], ...]


def measure_phases(commands: PhaseCommands, env: dict[str, str],
                   ready_line: str) -> tuple[dict[str, float], list[str]]:
    """Pull, create, and run until ``ready_line``: the seconds of each phase and the
    workload's output; the container is killed and removed afterwards, untimed."""
    seconds = {"pull": timed_command(commands.pull, env),
               "create": timed_command(commands.create, env)}
    attached = AttachedRun(commands.start, env)
    try:
        seconds["run"] = attached.until(ready_line)
    finally:
        attached.close(lambda: quiet_command(commands.kill, env))
        for argv in commands.remove:
            quiet_command(argv, env)
    return seconds, attached.lines


class ColdRuntime:
    """What a runtime does around its daemons: ``start`` from an empty ``workdir`` with the
    page cache dropped (``start_daemons``), ``stop`` them (``stop_daemons``) and remove it."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.host = ""  # the registry, through the link
        self.output: list[str] = []  # the last run's workload output

    def start(self, registry_host: str) -> None:
        self.host = registry_host
        work = cold_directory(self.workdir)
        try:
            self.start_daemons(work)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.stop_daemons()
        discard_directory(self.workdir)

    def start_daemons(self, work: Path) -> None:
        raise NotImplementedError

    def stop_daemons(self) -> None:
        raise NotImplementedError
