"""`stargz bench`: usage errors in one line before anything starts, and a --quick run end to end
on this machine (real images, registry, link relay, containerd and our snapshotter): every
sample succeeds, the lazy pull fetches less than the full one, the three outputs are written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STARGZ = Path(sys.executable).with_name("stargz")


def _bench(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, str(STARGZ), "bench", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


@pytest.mark.parametrize(("args", "message"), [
    (("--samples", "0"), "'0' is not a positive number of samples"),
    (("--links", "fast"), "'fast' is not a link"),
    (("--images", "nginx"), "invalid choice: 'nginx'"),
    (("--runtimes", "cri-o"), "invalid choice: 'cri-o'"),
])
def test_bad_options_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    done = _bench(*args)
    assert done.returncode == 2
    assert message in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(("args", "message"), [
    (("--runtimes", "containerd-go", "podman-ours"), "--runtimes containerd-go needs --peers"),
    (("--variants", "ctr-remote-optimized"), "--variants ctr-remote-optimized needs --peers"),
    (("--peers", "/nonexistent"), "--peers /nonexistent has no stargzd, stargzstore"),
])
def test_choices_needing_the_peers_fail_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = _bench(*args)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stargz: error: ")
    assert message in lines[0]


def test_missing_tools_are_named() -> None:
    done = _bench("--quick", env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    assert done.stderr.startswith("stargz: error: stargz bench needs docker-registry, "
                                  "containerd, ctr, runc")
    assert len(done.stderr.splitlines()) == 1


def test_not_root_is_refused_in_one_line() -> None:
    done = _bench("--quick", prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                     "--clear-groups"))
    assert done.returncode == 1
    assert done.stderr == ("stargz: error: stargz bench needs root (it runs containerd, podman, "
                           "FUSE mounts and drops the page cache)\n")


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _bench("--quick", "--samples", "1", "--seed", "7", "--output", str(out),
                  timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    with (out / "samples.csv").open() as source:
        rows = list(csv.DictReader(source))
    assert {(row["variant"], row["runtime"]) for row in rows} == {
        ("gzip", "containerd-full"), ("estargz-optimized", "containerd-ours")}
    assert all(row["ok"] == "1" for row in rows), rows
    fetched = {row["runtime"]: int(row["fetched_bytes"]) for row in rows}
    assert 0 < fetched["containerd-ours"] < fetched["containerd-full"]
    results = (out / "results.md").read_text()
    table = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in results.splitlines()
             if line.startswith("| python") and "containerd" in line]
    assert [row[:4] for row in table] == [["python", "gzip", "containerd-full", "1/1"],
                                          ["python", "estargz-optimized", "containerd-ours",
                                           "1/1"]]
    assert "## 100mbit-10ms" in results
    assert results in done.stdout  # the table is printed too
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plan: 2 samples" in done.stderr
