"""Shared pieces of the benchmarks: run a child and measure it, print a table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so `tests.support` (image and Go harness builders) imports
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Measured:
    """One child process: wall and CPU seconds, peak resident memory, its stdout."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str


def run_measured(argv: Sequence[str]) -> Measured:
    """Run `argv` to completion; peak RSS comes from the kernel's rusage of that one child."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} failed with exit status {child.returncode}")
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).rjust(w) if i else str(cell).ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
