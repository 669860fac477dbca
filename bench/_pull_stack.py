"""One measured run of the lazy-pull benchmark: fresh daemons, pull, create, run, bytes served.

Each run gets its own directory (containerd root and state, snapshotter root), its own
containerd and snapshotter processes, and leaves nothing behind: the container and task are
deleted, the daemons stopped by PID, leftover mounts detached, the directory removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _pull_trace import (
    Sample,
    go_rows,
    our_rows,
    read_log,
    read_stamped,
    registry_gets,
    stamp_lines,
)
from tests.support.registry import RunningRegistry, blob_bytes_served

from stargz.hellobench.daemons import (
    Containerd,
    GoSnapshotterProcess,
    ReadinessListener,
    SnapshotterProcess,
    detach_mounts_under,
    python_env,
    stop_process,
    wait_for_socket,
)

REPO = Path(__file__).resolve().parents[1]
STARGZ = str(Path(sys.executable).with_name("stargz"))
STARGZD = Path(os.environ.get("STARGZD", "/tmp/peers/stargzd"))
WORKLOAD = ("python3", "-c", 'print("hello")')
# The big-TOC image's workload: walk the 100,000 files under /data, then say hello.
WALK_WORKLOAD = ("python3", "-c",
                 'import os; sum(len(f) for _, _, f in os.walk("/data")); print("hello")')
EXPECTED_LINE = "hello"
STEP_TIMEOUT_S = 600.0
PHASES = ("pull", "create", "run")


@dataclass(frozen=True)
class Mode:
    """How one mode pulls: its snapshotter daemon (None: containerd's overlayfs) and client."""

    name: str
    snapshotter: str | None  # "ours" | "go" | None
    pull_tool: str  # "ctr" | "ctr-remote" | "stargz"


MODES = {
    "full": Mode("full", None, "ctr"),
    "ours": Mode("ours", "ours", "ctr-remote"),
    "ours-rpull": Mode("ours-rpull", "ours", "stargz"),
    "go": Mode("go", "go", "ctr-remote"),
}


@dataclass
class RunResult:
    mode: str
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    fetched: dict[str, int] = field(default_factory=dict)  # phase -> blob bytes served by its end
    startup_s: float = 0.0  # snapshotter spawned -> its socket accepts
    # phase -> (start, end), time.monotonic(); "start": snapshotter spawned -> socket accepts
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    gets: dict[str, tuple[int, int]] = field(default_factory=dict)  # phase -> blob GETs, bytes
    traced: bool = False  # run with the daemon's trace lines on (left out of the medians)
    peak_rss_mib: float = 0.0  # the snapshotter daemon's VmHWM at the end of the run
    trace: Sample | None = None  # what the snapshotter's log says, phase by phase


@dataclass
class Snapshotter:
    proc: subprocess.Popen[bytes]
    spawned: float  # time.monotonic() just before the spawn
    listening: float  # time.monotonic() when its socket first accepted a connection
    ready: float  # time.monotonic() at its READY=1 (Go's sends none: when it listens)
    stamper: threading.Thread | None = None  # copies its output to snap.log, time-stamped


def start_snapshotter(kind: str, work: Path, config: Path | None,
                      trace: bool = False) -> Snapshotter:
    """Our daemon (info logging: debug lines per FUSE read would slow it) or the Go stargzd.
    Traced: ours with --trace (the stargz.trace lines only), Go at debug level; either's
    output reaches snap.log through a pipe, each line stamped with its arrival time."""
    sock, root, log = work / "snap.sock", work / "snap-root", work / "snap.log"
    daemon: SnapshotterProcess
    if kind == "ours":
        daemon = SnapshotterProcess(sock, root, log, log_level="info", extra_args=[
            *(["--trace"] if trace else []), *(["--config", str(config)] if config else [])])
    else:
        daemon = GoSnapshotterProcess(STARGZD, sock, root, log, config,
                                      log_level="debug" if trace else "info")
    argv = daemon.command()
    # this checkout's code, even when the venv's editable install points at another one
    env = python_env((str(REPO / "src"), str(REPO)))
    # ours says READY=1 (sd_notify) once a pull runs at full speed; containerd is started
    # then, as systemd starts it after a Type=notify unit ordered before it
    listener = ReadinessListener() if kind == "ours" else None
    if listener is not None:
        env |= listener.env()
    started = time.monotonic()
    stamper = None
    if trace:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        stamper = stamp_lines(proc.stdout, log.open("ab"))
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        # polled every 2 ms: the start-up time is a measured figure
        wait_for_socket(sock, proc, f"{kind} snapshotter", poll_s=0.002)
        listening = time.monotonic()
        if listener is not None:
            listener.wait_ready(proc, f"{kind} snapshotter", poll_s=0.002)
    except BaseException:
        stop_process(proc)
        raise
    finally:
        if listener is not None:
            listener.close()
    return Snapshotter(proc, started, listening, time.monotonic(), stamper)


def _checked(argv: Sequence[str], env: dict[str, str]) -> str:
    result = subprocess.run(list(argv), env=env, capture_output=True, text=True,
                            timeout=STEP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _start_task_until_output(container: str, env: dict[str, str]) -> None:
    """`ctr task start` (attached): done when the workload's line appears, then reaped."""
    proc = subprocess.Popen(["ctr", "task", "start", container], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = [line.strip() for line in iter(proc.stdout.readline, "")
            if line.strip() == EXPECTED_LINE]
    _, err = proc.communicate(timeout=STEP_TIMEOUT_S)
    if not seen or proc.returncode != 0:
        raise RuntimeError(f"ctr task start {container}: exit {proc.returncode}, "
                           f"no {EXPECTED_LINE!r} line: {err[-2000:]}")


def pull_argv(mode: Mode, image: str) -> list[str]:
    if mode.pull_tool == "ctr":
        return ["ctr", "images", "pull", "--plain-http", image]
    if mode.pull_tool == "ctr-remote":
        return ["ctr-remote", "images", "rpull", "--plain-http", image]
    return [STARGZ, "rpull", "--plain-http", image]


def _phases(mode: Mode, image: str, env: dict[str, str], registry: RunningRegistry,
            result: RunResult, workload: Sequence[str]) -> None:
    """The three measured phases, as the reference's HelloBench splits them."""
    base = blob_bytes_served(registry)
    access_log = registry.workdir / "registry.out"
    offset = access_log.stat().st_size
    container = "bench-hello"
    create = ["ctr", "containers", "create"]
    if mode.snapshotter is not None:
        create += ["--snapshotter", "stargz"]
    create += [image, container, "--", *workload]  # else ctr takes -c for its --config
    steps: dict[str, Callable[[], object]] = {
        "pull": lambda: _checked(pull_argv(mode, image), env),
        "create": lambda: _checked(create, env),
        "run": lambda: _start_task_until_output(container, env),
    }
    for phase in PHASES:
        started = time.monotonic()
        result.seconds[phase] = _timed(steps[phase])
        result.marks[phase] = (started, time.monotonic())
        result.fetched[phase] = blob_bytes_served(registry) - base
        with access_log.open("rb") as served:
            served.seek(offset)
            stretch = served.read()
        offset += len(stretch)
        result.gets[phase] = registry_gets(stretch.decode(errors="replace"))


def run_once(mode: Mode, image: str, registry: RunningRegistry, work: Path,
             config: dict[str, Path | None], keep_logs: Path | None = None,
             trace: bool = False, workload: Sequence[str] = WORKLOAD) -> RunResult:
    """Fresh snapshotter and containerd under `work`, the three phases, then everything gone."""
    work.mkdir(parents=True)
    result = RunResult(mode.name, traced=trace)
    snapshotter = None
    ctd = Containerd(work / "containerd", work / "snap.sock")
    try:
        if mode.snapshotter is not None:  # first: containerd's gRPC backoff is slow to retry
            snapshotter = start_snapshotter(mode.snapshotter, work, config[mode.snapshotter],
                                            trace)
            result.startup_s = snapshotter.listening - snapshotter.spawned
            result.marks["start"] = (snapshotter.spawned, snapshotter.listening)
            result.marks["ready"] = (snapshotter.spawned, snapshotter.ready)
        ctd.start()
        _phases(mode, image, ctd.env(), registry, result, workload)
        if snapshotter is not None:
            result.peak_rss_mib = peak_rss_mib(snapshotter.proc.pid)
    except BaseException:
        _tail_logs(work)
        raise
    finally:
        if ctd.proc is not None:
            _delete_container(ctd.env())
        ctd.stop()
        if snapshotter is not None:
            stop_process(snapshotter.proc)
            if snapshotter.stamper is not None:
                snapshotter.stamper.join(10)
        detach_mounts_under(work)
        if trace and mode.snapshotter is not None and set(PHASES) <= result.marks.keys():
            result.trace = _traced(mode, result, work / "snap.log")
        if keep_logs is not None:
            _keep_logs(work, keep_logs / f"{work.name}-{mode.name}")
        shutil.rmtree(work, ignore_errors=True)
    return result


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident set (VmHWM in /proc/PID/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _traced(mode: Mode, result: RunResult, log: Path) -> Sample:
    lines = read_stamped(read_log(log))
    rows = (our_rows if mode.snapshotter == "ours" else go_rows)(lines, result.marks)
    return Sample(mode.name, result.marks, rows)


def _delete_container(env: dict[str, str]) -> None:
    """Task and container gone, so no shim outlives the run (kill: only if it still runs)."""
    for argv in (["ctr", "task", "kill", "-s", "KILL", "bench-hello"],
                 ["ctr", "task", "delete", "bench-hello"]):
        subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    subprocess.run(["ctr", "containers", "delete", "bench-hello"], env=env,
                   capture_output=True, timeout=60, check=False)


def _keep_logs(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in (work / "snap.log", work / "containerd" / "containerd.log"):
        if log.exists():
            shutil.copy(log, dest / log.name)


def _tail_logs(work: Path) -> None:
    for log in (work / "snap.log", work / "containerd" / "containerd.log"):
        if log.exists():
            print(f"--- last lines of {log}:", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
