"""The lazy-pull benchmark's own pieces: medians and ratios from run results, the daemons' logs
read back as phases (its shaping relay is stargz.hellobench.link: test_hellobench_link.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str, path: Path) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # bench/pull imports its siblings by bare name
    try:
        spec = importlib.util.spec_from_loader(name, SourceFileLoader(name, str(path)))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_medians_and_ratios_of_runs() -> None:
    pull = _load("bench_pull", BENCH / "pull")
    stack = sys.modules.get("_pull_stack") or _load("_pull_stack", BENCH / "_pull_stack.py")
    runs = []
    for mode, seconds, fetched in (("ours", (1.0, 0.1, 2.0), 5), ("ours", (3.0, 0.3, 4.0), 7),
                                   ("ours", (2.0, 0.2, 3.0), 6), ("go", (1.0, 0.1, 1.0), 4)):
        result = stack.RunResult(mode)
        result.seconds = dict(zip(stack.PHASES, seconds, strict=True))
        result.fetched = {phase: fetched * 1_000_000 for phase in stack.PHASES}
        runs.append(result)
    table = pull.medians(runs)
    assert table["ours"]["pull"] == 2.0 and table["ours"]["run"] == 3.0
    assert table["ours"]["total"] == 5.2  # median of the runs' totals, not a sum of medians
    assert table["ours"]["MB"] == 6.0 and table["go"]["MB"] == 4.0
    assert pull._ratio(table["ours"]["total"], table["go"]["total"]) == "2.48x"


# -- bench/pull --trace: the daemons' logs read back as phases ----------------------------------

def _import(name: str) -> ModuleType:
    """A bench module by its bare name, as bench/pull imports it (so it is in sys.modules,
    which its dataclasses need)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


trace_rows = _import("_pull_trace")
LAYER = "sha256:" + "0a0bc1e6" * 8
# the bench's clock: snapshotter spawned at 99.5 s, listening at 99.9; pull, create, run after
MARKS = {"start": (99.5, 99.9), "pull": (100.2, 100.8), "create": (100.8, 100.9),
         "run": (100.9, 101.5)}


def _ours(t: float, rest: str) -> str:
    """A line as our daemon logs it (epoch at 100.0 s), stamped by the bench on arrival."""
    return f"{100.0 + t / 1000:.6f} 2026-12-02T13:07:05.000+00:00 DEBUG stargz.trace: trace {rest}"


OUR_LOG = "\n".join([
    "100.000000 2026-12-02 DEBUG stargz.trace: trace phase=epoch t=0.0 mono=100.000000",
    _ours(10, "phase=startup_import_lazy t=10.0 ms=200.00"),
    "100.300000 2026-12-02 INFO __main__: serving containerd snapshots on /x/snap.sock",
    _ours(700, f"phase=grpc t=300.0 ms=400.00 call=Prepare key=\"default/1/extract-1 {LAYER}\""),
    _ours(305, "phase=lazy_worker_wait t=301.0 ms=4.00"),
    _ours(690, f"phase=lazy_prepare t=310.0 ms=380.00 layer={LAYER}"),
    _ours(361, f"phase=head t=311.0 ms=50.00 layer={LAYER} size=68173773"),
    _ours(381, f"phase=toc_fetch t=361.0 ms=20.00 layer={LAYER} bytes=524288 requests=1"),
    _ours(531, f"phase=toc_parse t=381.0 ms=150.00 layer={LAYER} entries=8239"),
    _ours(532, f"phase=resolve_wait t=311.0 ms=221.00 layer={LAYER}"),
    _ours(690, f"phase=mount_ready t=690.0 layer={LAYER}"),
    _ours(695, f"phase=prefetch t=690.0 ms=5.00 layer={LAYER} chunks=0 end=0 bytes=0"),
    _ours(780, f"phase=fetch t=750.0 ms=30.00 kind=on_demand layer={LAYER} path=usr/bin/python3.11"
               " chunks=1 ranges=1 bytes=1000"),
    _ours(990, f"phase=read t=950.0 ms=40.00 layer={LAYER} path=\"a b\" offset=0 size=10"),
    _ours(1020, f"phase=fetch t=1000.0 ms=20.00 kind=on_demand layer={LAYER} path=x bytes=3000"),
    _ours(1025, f"phase=read t=1000.0 ms=25.00 layer={LAYER} path=x offset=0 size=10"),
    _ours(1200, f"phase=fetch t=1100.0 ms=100.00 kind=background layer={LAYER} path=y bytes=5000"),
    _ours(1150, f"phase=fetch t=1120.0 ms=30.00 kind=background layer={LAYER} path=w bytes=9"
                " error=CancelledError"),
    _ours(1700, f"phase=fetch t=1600.0 ms=100.00 kind=background layer={LAYER} path=z bytes=7"),
])


def test_our_trace_lines_become_phases_on_the_bench_clock() -> None:
    rows = trace_rows.our_rows(trace_rows.read_stamped(OUR_LOG), MARKS)
    approx = pytest.approx
    # start-up, from the spawn: the epoch came 500 ms after it, the lazy import 10 ms later
    assert rows["startup: spawn -> trace epoch (interpreter, imports)"].ms == approx(500)
    assert rows["startup: import_lazy"].start == approx(510) and rows[
        "startup: import_lazy"].ms == approx(200)
    # the pull began at 100.2 s: the first Prepare came 100 ms later and took 400 ms
    assert rows["manifest+config (pull start -> 1st Prepare)"].ms == approx(100)
    prepare = rows["Prepare 0a0bc1e60a0b"]
    assert (prepare.start, prepare.ms) == (approx(100), approx(400))
    assert rows["  wait for the lazy worker"].ms == approx(4)
    fetch = rows["  footer+TOC fetch"]
    assert (fetch.start, fetch.ms, fetch.bytes) == (approx(161), approx(20), 524288)
    assert rows["  TOC parse"].ms == approx(150)
    assert rows["  mount ready (after pull start)"].start == approx(490)
    on_demand = rows["run: on-demand fetches"]
    assert (on_demand.count, on_demand.bytes, on_demand.ms) == (2, 4000, approx(50))
    reads = rows["run: file reads (summed wait)"]
    assert (reads.count, reads.ms) == (2, approx(65))
    assert rows["run: first file read"].start == approx(750)
    # the second background fetch began after "hello" (run ended at 101.5 s)
    background = rows["background fetches before hello"]
    assert (background.count, background.bytes) == (2, 5009)
    assert rows["  of which cancelled by prioritized work"].count == 1


GO_LOG = "\n".join([
    '99.950000 time="2026-12-02T13:07:04Z" level=info msg="stargzd serving on /x/snap.sock"',
    '100.300000 time="2026-12-02T13:07:05Z" level=info msg="preparing filesystem mount at '
    'mountpoint=/r/snapshots/1/fs" key="default/1/extract-1 sha256:83be" parent=',
    '100.302000 time="2026-12-02T13:07:05Z" level=debug msg=resolving key="default/1/extract-1 '
    f'sha256:83be" mountpoint=/r/snapshots/1/fs parent= src="127.0.0.1:5000/b/p:e/{LAYER}"',
    '100.520000 time="2026-12-02T13:07:05Z" level=debug msg=resolved key="default/1/extract-1 '
    f'sha256:83be" mountpoint=/r/snapshots/1/fs parent= src="127.0.0.1:5000/b/p:e/{LAYER}"',
    '100.521000 time="2026-12-02T13:07:05Z" level=debug msg=verified key="default/1/extract-1 '
    'sha256:83be" mountpoint=/r/snapshots/1/fs parent=',
    '100.600000 time="2026-12-02T13:07:05Z" level=debug msg="value=75.5 milliseconds; '
    f'prefetch_size=1048576 bytes" layer_sha="{LAYER}" metrics=latency operation=prefetch_total',
    '100.530000 time="2026-12-02T13:07:05Z" level=debug msg="prepared remote snapshot" '
    'key="default/1/extract-1 sha256:83be" parent= remote-snapshot-prepared=true',
    '100.850000 time="2026-12-02T13:07:05Z" level=debug msg="checking layer availability" '
    'key=default/2/bench-hello',
])


def test_go_log_lines_become_the_same_phases() -> None:
    rows = trace_rows.go_rows(trace_rows.read_stamped(GO_LOG), MARKS)
    approx = pytest.approx
    assert rows["manifest+config (pull start -> 1st Prepare)"].ms == approx(100)
    prepare = rows["Prepare 0a0bc1e60a0b"]  # the layer comes from the resolved line's src
    assert (prepare.start, prepare.ms) == (approx(100), approx(230))
    assert rows["  resolve (all three)"].ms == approx(218)
    assert rows["  verify TOC digest"].ms == approx(1)
    assert rows["  FUSE mount"].ms == approx(9)
    prefetch = rows["prefetch"]  # logged when done: it began value ms before the line
    assert (prefetch.start, prefetch.ms, prefetch.bytes) == (approx(324.5), 75.5, 1048576)
    assert rows["layer checks (wait for prefetch)"].count == 1


def test_stamped_lines_keep_their_bytes_and_arrival_order(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    out = tmp_path / "snap.log"
    before = time.monotonic()
    with os.fdopen(read_end, "rb") as source:
        thread = trace_rows.stamp_lines(source, out.open("wb"))
        os.write(write_end, b"one\n")
        os.write(write_end, b'two "quoted"\nthree without newline')
        os.close(write_end)
        thread.join(10)
    after = time.monotonic()
    stamped = trace_rows.read_stamped(out.read_text())
    assert [line for _, line in stamped] == ["one", 'two "quoted"', "three without newline"]
    stamps = [stamp for stamp, _ in stamped]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after


def test_registry_gets_count_blob_gets_only() -> None:
    log = "\n".join([
        f'127.0.0.1 - - [02/Dec/2026:13:07:05 +0000] "GET /v2/b/p/blobs/{LAYER} HTTP/1.1" '
        '206 524288 "" "Go-http-client/1.1"',
        f'127.0.0.1 - - [02/Dec/2026:13:07:05 +0000] "HEAD /v2/b/p/blobs/{LAYER} HTTP/1.1" '
        '200 68173773 "" "python-httpx"',
        '127.0.0.1 - - [02/Dec/2026:13:07:05 +0000] "GET /v2/b/p/manifests/e HTTP/1.1" 200 '
        '600 "" "ctr"',
        f'127.0.0.1 - - [02/Dec/2026:13:07:06 +0000] "GET /v2/b/p/blobs/{LAYER} HTTP/1.1" '
        '206 1000 "" "python-httpx"',
    ])
    assert trace_rows.registry_gets(log) == (2, 525288)


def test_phase_table_medians_order_and_ratios() -> None:
    cell = trace_rows.Cell
    ours = trace_rows.median_rows([
        {"ctr: run": cell(500, 700), "Prepare ab": cell(100, 300, 10, 1)},
        {"ctr: run": cell(520, 900), "Prepare ab": cell(110, 200, 30, 3)},
        {"ctr: run": cell(510, 800), "ctr: pull": cell(0, 450)},
    ])
    assert (ours["ctr: run"].start, ours["ctr: run"].ms) == (510, 800)
    assert (ours["Prepare ab"].ms, ours["Prepare ab"].bytes, ours["Prepare ab"].count) == (
        250, 20, 2)
    go = {"ctr: pull": cell(0, 150), "ctr: run": cell(200, 1000), "Prepare ab": cell(60, 0.5)}
    header, body = trace_rows.phase_table({"go": go, "ours": ours})
    assert header == ["phase", "ours", "go", "ours/go"]
    assert [row[0] for row in body] == ["ctr: pull", "Prepare ab", "ctr: run"]
    ratios = {row[0]: row[-1] for row in body}
    assert ratios == {"ctr: pull": "3.00x", "ctr: run": "0.80x", "Prepare ab": ""}  # < 1 ms
    assert body[1][1] == "250 ms n=2 0.0 kB @105"
    assert trace_rows.cell_text(cell(None, None, 4_270_000, 21)) == "n=21 4.27 MB"
    assert trace_rows.cell_text(cell(None, None, 400, 1)) == "n=1 0.4 kB"
