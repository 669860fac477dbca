"""bench/pull --trace: where one cold lazy start spends its time, read from the daemons' logs.

Ours logs ``stargz.trace`` lines (``trace phase=P t=MS ms=MS ...``; ``t`` counts from the
process's trace epoch, which the first line gives on the system-wide monotonic clock). The Go
stargzd at ``-log-level debug`` logs logrus lines whose times have whole seconds only, so the
bench stamps every line of both daemons with ``time.monotonic()`` as it arrives (see
``stamp_lines``); the Go rows are built from those stamps and from its metrics lines
(``operation=prefetch_total ... msg="value=X milliseconds; prefetch_size=N bytes"``).
Everything is placed on one clock, in milliseconds from the start of the pull.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stargz.trace import parse as parse_trace

_LOGRUS_FIELD = re.compile(r'([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)')
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_METRIC = re.compile(r"value=([\d.e+-]+) milliseconds(?:; (\w+)=(\d+) bytes)?")
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                     r'(?P<bytes>\d+|-)')

# bench phase -> (start, end) in time.monotonic() seconds: pull, create, run, and "start"
# (the snapshotter spawned -> its socket accepted a connection)
Marks = dict[str, tuple[float, float]]


@dataclass
class Cell:
    """One row of one implementation: when it began (ms after the pull started), how long it
    took (ms; for sums, the summed time), and what it moved."""

    start: float | None = None
    ms: float | None = None
    bytes: int | None = None
    count: int | None = None


Rows = dict[str, Cell]  # row name -> cell, in the order rows were made


@dataclass
class Sample:
    """One traced run: the bench's own clock marks, and what the daemons' logs say."""

    mode: str
    marks: Marks
    rows: Rows = field(default_factory=dict)


# -- capturing ---------------------------------------------------------------------------------

def stamp_lines(source: IO[bytes], out: IO[bytes]) -> threading.Thread:
    """Copy ``source`` to ``out`` line by line, each prefixed with its arrival time
    (``time.monotonic()``, 6 decimals) and a space; a daemon thread until EOF."""

    def copy() -> None:
        for line in iter(source.readline, b""):
            out.write(f"{time.monotonic():.6f} ".encode() + line)
            out.flush()
        out.close()

    thread = threading.Thread(target=copy, name="stamp-lines", daemon=True)
    thread.start()
    return thread


def read_stamped(text: str) -> list[tuple[float, str]]:
    """(arrival time, line) for every stamped line; unstamped lines are skipped."""
    stamped = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        try:
            stamped.append((float(stamp), rest))
        except ValueError:
            continue
    return stamped


def registry_gets(access_log: str) -> tuple[int, int]:
    """Blob GETs in a stretch of the registry's access log: (requests, body bytes)."""
    count = total = 0
    for match in _ACCESS.finditer(access_log):
        if match["method"] == "GET" and "/blobs/" in match["path"]:
            count += 1
            total += int(match["bytes"]) if match["bytes"] != "-" else 0
    return count, total


# -- ours --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    phase: str
    start: float  # ms after the pull started
    ms: float | None
    fields: dict[str, str]

    @property
    def end(self) -> float:
        return self.start + (self.ms or 0.0)

    def num(self, key: str) -> int:
        value = self.fields.get(key, "")
        return int(value) if value.isdigit() else 0


def our_records(lines: Iterable[tuple[float, str]], origin: float) -> list[Record]:
    """Our trace lines on the bench's clock (ms after ``origin``, a monotonic time)."""
    records: list[Record] = []
    epoch: float | None = None
    for _, line in lines:
        fields = parse_trace(line)
        if fields is None:
            continue
        if fields["phase"] == "epoch":
            epoch = float(fields["mono"])
            continue
        if epoch is None:
            continue
        start = (epoch - origin) * 1000 + float(fields.pop("t"))
        ms = float(fields.pop("ms")) if "ms" in fields else None
        records.append(Record(fields.pop("phase"), start, ms, fields))
    return records


def _one(records: list[Record], phase: str, **match: str) -> Cell:
    found = [r for r in records if r.phase == phase
             and all(r.fields.get(k) == v for k, v in match.items())]
    if not found:
        return Cell()
    first = found[0]
    return Cell(first.start, first.ms, first.num("bytes") or None)


def _total(records: Iterable[Record], *, between: tuple[float, float] | None = None) -> Cell:
    """Count, summed ms and bytes of ``records`` (those starting within ``between``)."""
    chosen = [r for r in records if between is None or between[0] <= r.start < between[1]]
    if not chosen:
        return Cell(count=0)
    moved = [r.num("bytes") for r in chosen if "bytes" in r.fields]
    return Cell(min(r.start for r in chosen), sum(r.ms or 0.0 for r in chosen),
                sum(moved) if moved else None, len(chosen))


def our_rows(lines: Sequence[tuple[float, str]], marks: Marks) -> Rows:
    origin = marks["pull"][0]
    records = our_records(lines, origin)
    rel = {phase: ((s - origin) * 1000, (e - origin) * 1000) for phase, (s, e) in marks.items()}
    rows: Rows = {}
    _startup_rows(rows, records, (marks["start"][0] - origin) * 1000, lines, origin)
    prepares = [r for r in records if r.phase == "lazy_prepare"]
    calls = [r for r in records if r.phase == "grpc"]
    if prepares:
        rows["manifest+config (pull start -> 1st Prepare)"] = Cell(0.0, min(
            c.start for c in calls if c.fields.get("call") == "Prepare"))
    for prepare in prepares:
        layer = prepare.fields["layer"]
        call = next((c for c in calls if c.fields.get("call") == "Prepare"
                     and c.start <= prepare.start <= c.end), None)
        head = f"Prepare {layer[7:19]}"
        rows[head] = Cell(call.start, call.ms) if call else Cell(prepare.start, prepare.ms)
        if call is not None:  # the hand-over to the lazy worker (its start, on the 1st call)
            waits = [r for r in records if r.phase == "lazy_worker_wait"
                     and call.start <= r.start <= call.end]
            rows["  wait for the lazy worker"] = _total(waits)
        for label, phase in (("HEAD (blob size)", "head"), ("footer+TOC fetch", "toc_fetch"),
                             ("TOC parse", "toc_parse"), ("resolve (all three)", "resolve_wait"),
                             ("verify TOC digest", "verify"), ("index chunks", "index"),
                             ("FUSE mount", "fuse_mount"), ("add layer", "add_layer")):
            rows[f"  {label}"] = _one(records, phase, layer=layer)
        ready = _one(records, "mount_ready", layer=layer)
        rows["  mount ready (after pull start)"] = Cell(ready.start)
        rows["prefetch"] = _one(records, "prefetch", layer=layer)
    fetches = [r for r in records if r.phase == "fetch"]
    decodes = [r for r in records if r.phase == "decode"]
    rows["  prefetch fetches"] = _total(f for f in fetches if f.fields.get("kind") == "prefetch")
    rows["  prefetch decode+verify+cache"] = _total(
        d for d in decodes if d.fields.get("kind") == "prefetch")
    rows["create: gRPC calls"] = _total(calls, between=rel["create"])
    rows["  prefetch wait"] = _total(r for r in records if r.phase == "prefetch_wait")
    rows["run: gRPC calls"] = _total(calls, between=rel["run"])
    reads = [r for r in records if r.phase == "read"]
    rows["run: file reads (summed wait)"] = _total(reads, between=rel["run"])
    if reads:
        rows["run: first file read"] = Cell(reads[0].start)
        rows["run: last file read done"] = Cell(max(r.end for r in reads))
    on_demand = [f for f in fetches if f.fields.get("kind") == "on_demand"]
    rows["run: on-demand fetches"] = _total(on_demand, between=(rel["pull"][0], rel["run"][1]))
    rows["  on-demand decode+verify+cache"] = _total(
        (d for d in decodes if d.fields.get("kind") == "on_demand"),
        between=(rel["pull"][0], rel["run"][1]))
    background = [f for f in fetches if f.fields.get("kind") == "background"]
    rows["background fetches before hello"] = _total(
        background, between=(rel["pull"][0], rel["run"][1]))
    rows["  of which cancelled by prioritized work"] = _total(
        (f for f in background if f.fields.get("error") == "CancelledError"),
        between=(rel["pull"][0], rel["run"][1]))
    return rows


def _startup_rows(rows: Rows, records: list[Record], spawned: float,
                  lines: Iterable[tuple[float, str]], origin: float) -> None:
    """The daemon's start, its times from when it was spawned: up to the trace epoch (the
    interpreter and the first imports), then its own startup_* spans."""
    epoch = next((f for f in map(parse_trace, (line for _, line in lines))
                  if f is not None and f["phase"] == "epoch"), None)
    if epoch is not None:
        rows["startup: spawn -> trace epoch (interpreter, imports)"] = Cell(
            0.0, (float(epoch["mono"]) - origin) * 1000 - spawned)
    for record in records:
        if record.phase.startswith("startup_"):
            rows[f"startup: {record.phase[8:]}"] = Cell(record.start - spawned, record.ms)


# -- Go stargzd --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoLine:
    at: float  # ms after the pull started
    msg: str
    fields: dict[str, str]


def go_lines(lines: Iterable[tuple[float, str]], origin: float) -> list[GoLine]:
    parsed = []
    for stamp, line in lines:
        fields = {k: v[1:-1].replace('\\"', '"') if v.startswith('"') else v
                  for k, v in _LOGRUS_FIELD.findall(line)}
        if "msg" in fields:
            parsed.append(GoLine((stamp - origin) * 1000, fields.pop("msg"), fields))
    return parsed


def go_rows(lines: Sequence[tuple[float, str]], marks: Marks) -> Rows:
    origin = marks["pull"][0]
    logged = go_lines(lines, origin)
    rows: Rows = {}
    starts = [g for g in logged if g.msg.startswith("preparing filesystem mount")]
    if starts:
        rows["manifest+config (pull start -> 1st Prepare)"] = Cell(0.0, starts[0].at)
    for start in starts:
        _go_prepare(rows, logged, start)
    for label, operation in (("prefetch", "prefetch_total"),
                             ("  prefetch download", "prefetch_download"),
                             ("  prefetch decompress+cache", "prefetch_decompress"),
                             ("background fetch (total)", "background_fetch_total")):
        rows[label] = _go_metric(logged, operation)
    checks = [g for g in logged if g.msg == "checking layer availability"]
    rows["layer checks (wait for prefetch)"] = Cell(
        checks[0].at if checks else None, None, None, len(checks))
    return rows


def _go_prepare(rows: Rows, logged: list[GoLine], start: GoLine) -> None:
    mountpoint = start.msg.partition("mountpoint=")[2]
    key = start.fields.get("key")
    mine = [g for g in logged if g.fields.get("mountpoint") == mountpoint]
    verified = next((g for g in mine if g.msg == "verified"), None)
    done = next((g for g in logged if g.msg == "prepared remote snapshot"
                 and g.fields.get("key") == key), None)
    resolved = [g for g in mine if g.msg == "resolved"
                and (verified is None or g.at <= verified.at)]
    target = resolved[-1] if resolved else None  # the layer this Prepare waited for
    layer = _DIGEST.findall(target.fields.get("src", "")) if target else []
    resolving = next((g for g in mine if g.msg == "resolving"
                      and target is not None and g.fields.get("src") == target.fields["src"]),
                     None)
    head = f"Prepare {layer[-1][7:19] if layer else '?'}"
    rows[head] = Cell(start.at, done.at - start.at if done else None)
    if resolving and target:
        rows["  resolve (all three)"] = Cell(resolving.at, target.at - resolving.at)
    if target and verified:
        rows["  verify TOC digest"] = Cell(target.at, verified.at - target.at)
    if verified and done:
        rows["  FUSE mount"] = Cell(verified.at, done.at - verified.at)
        rows["  mount ready (after pull start)"] = Cell(done.at)


def _go_metric(logged: list[GoLine], operation: str) -> Cell:
    for line in logged:
        if line.fields.get("operation") != operation:
            continue
        match = _METRIC.search(line.msg)
        if match is None:
            continue
        value = float(match[1])
        nbytes = int(match[3]) if match[3] else None
        return Cell(line.at - value, value, nbytes)
    return Cell()


# -- the table ---------------------------------------------------------------------------------

# Rows in the order of a start: each name is placed by the first entry it starts with.
ORDER = (
    "snapshotter start", "startup:", "ctr: pull", "manifest+config", "Prepare",
    "  wait for the lazy worker", "  HEAD",
    "  footer+TOC", "  TOC parse", "  resolve", "  verify", "  index", "  FUSE mount",
    "  add layer", "  mount ready", "prefetch", "  prefetch download", "  prefetch fetches",
    "  prefetch decode", "  prefetch decompress", "registry blob GETs during pull", "ctr: create",
    "create:", "  prefetch wait", "layer checks", "registry blob GETs during create", "ctr: run",
    "run: gRPC", "run: first file read", "run: file reads", "run: last file read",
    "run: on-demand fetches", "  on-demand decode",
    "background fetch", "  of which cancelled", "registry blob GETs during run",
)


MODE_ORDER = ("ours", "ours-rpull", "go", "full")


def _rank(name: str) -> int:
    return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))

def bench_rows(sample: Sample, gets: dict[str, tuple[int, int]]) -> Rows:
    """What the bench itself saw: daemon start, the ctr phases, registry GETs per phase."""
    origin = sample.marks["pull"][0]
    spawned, listening = sample.marks["start"]
    rows: Rows = {"snapshotter start -> socket (@ from spawn)": Cell(
        0.0, (listening - spawned) * 1000)}
    if "ready" in sample.marks:  # Go's stargzd sends no READY=1: ready is its socket
        rows["snapshotter start -> ready (READY=1)"] = Cell(
            0.0, (sample.marks["ready"][1] - spawned) * 1000)
    for phase, (start, end) in sample.marks.items():
        if phase not in ("start", "ready"):
            rows[f"ctr: {phase}"] = Cell((start - origin) * 1000, (end - start) * 1000)
    for phase, (count, nbytes) in gets.items():
        rows[f"registry blob GETs during {phase}"] = Cell(None, None, nbytes, count)
    return rows


def median_rows(samples: Sequence[Rows]) -> Rows:
    """Each row's fields as the median over the samples that have them."""
    names = list(dict.fromkeys(name for rows in samples for name in rows))
    merged: Rows = {}
    for name in names:
        cells = [rows[name] for rows in samples if name in rows]
        nbytes, count = _median(c.bytes for c in cells), _median(c.count for c in cells)
        merged[name] = Cell(_median(c.start for c in cells), _median(c.ms for c in cells),
                            None if nbytes is None else round(nbytes),
                            None if count is None else round(count))
    return merged


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cell_text(cell: Cell | None) -> str:
    if cell is None or all(v is None for v in (cell.start, cell.ms, cell.bytes, cell.count)):
        return "-"
    parts = []
    if cell.ms is not None:
        parts.append(f"{cell.ms:.0f} ms" if cell.ms >= 10 else f"{cell.ms:.1f} ms")
    if cell.count is not None:
        parts.append(f"n={cell.count}")
    if cell.bytes is not None:
        parts.append(f"{cell.bytes / 1e6:.2f} MB" if cell.bytes >= 100_000
                     else f"{cell.bytes / 1e3:.1f} kB")
    if cell.start is not None:
        parts.append(f"@{cell.start:.0f}")
    return " ".join(parts)


def phase_table(tables: dict[str, Rows]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one column per mode, then ours/go of the durations when both exist."""
    modes = sorted(tables, key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else 9, m))
    names = sorted(dict.fromkeys(name for rows in tables.values() for name in rows), key=_rank)
    header = ["phase", *modes]
    pair = ("ours", "go") if {"ours", "go"} <= set(modes) else None
    if pair:
        header.append("ours/go")
    body = []
    for name in names:
        row = [name, *(cell_text(tables[m].get(name)) for m in modes)]
        if pair:
            ours, go = (tables[m].get(name) for m in pair)
            row.append(_ratio(ours.ms if ours else None, go.ms if go else None))
        body.append(row)
    return header, body


def _ratio(ours: float | None, go: float | None) -> str:
    """ours/go of two durations, when both are at least 1 ms (below, the ratio is noise)."""
    if ours is None or go is None or min(ours, go) < 1:
        return ""
    return f"{ours / go:.2f}x"


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
