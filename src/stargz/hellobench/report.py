"""HelloBench's results: every sample as CSV, the medians per cell as markdown with their ratios
against the full pull, the Go reference and the physical limit.

A cell is one (image, variant, runtime, link). Ratios are time ratios, the row over its
reference (0.12x = 8 times faster): against the full pull of the same image over the same link by
the runtime's own family (containerd-full for containerd-*, podman-full for podman-*), and against
the Go reference of the same family running the same variant. The physical limit of an image over
a link is the least time any of its variants could take: the compressed bytes its workload needs
over the link's rate plus the round trips it cannot overlap, each one RTT.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import FormatError
from stargz.hellobench.model import PHASES, RUNTIMES, VARIANTS, Link, PushedVariant, Sample

CSV_FIELDS = ("order", "image", "variant", "runtime", "link", "index", "ok",
              *(f"{phase}_s" for phase in PHASES), "total_s", "fetched_bytes", "error")
MB = 1e6
CellKey = tuple[str, str, str, str]  # image, variant, runtime, link


def family(runtime: str) -> str:
    """containerd or podman: the stack a runtime name belongs to."""
    return runtime.split("-", 1)[0]


def full_runtime(runtime: str) -> str:
    return f"{family(runtime)}-full"


def go_runtime(runtime: str) -> str:
    return f"{family(runtime)}-go"


# --- CSV ---------------------------------------------------------------------------------------

def write_csv(samples: Iterable[Sample], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for sample in samples:
            writer.writerow(_csv_row(sample))


def _csv_row(sample: Sample) -> dict[str, str]:
    row = {"order": str(sample.order), "image": sample.image, "variant": sample.variant,
           "runtime": sample.runtime, "link": sample.link, "index": str(sample.index),
           "ok": "1" if sample.ok else "0", "total_s": f"{sample.total_s:.4f}",
           "fetched_bytes": str(sample.fetched_bytes), "error": sample.error}
    for phase in PHASES:
        seconds = sample.seconds.get(phase)
        row[f"{phase}_s"] = "" if seconds is None else f"{seconds:.4f}"
    return row


def read_csv(path: Path) -> list[Sample]:
    """The samples a :func:`write_csv` file holds (times rounded to 0.1 ms)."""
    with path.open(newline="", encoding="utf-8") as source:
        reader = csv.DictReader(source)
        if tuple(reader.fieldnames or ()) != CSV_FIELDS:
            raise FormatError(f"{path} is not a HelloBench samples file (its columns differ)")
        try:
            return [_sample_from_row(row) for row in reader]
        except (KeyError, ValueError) as err:
            raise FormatError(f"{path} line {reader.line_num}: {err}") from None


def _sample_from_row(row: Mapping[str, str]) -> Sample:
    seconds = {phase: float(row[f"{phase}_s"]) for phase in PHASES if row[f"{phase}_s"]}
    return Sample(image=row["image"], variant=row["variant"], runtime=row["runtime"],
                  link=row["link"], seconds=seconds, fetched_bytes=int(row["fetched_bytes"]),
                  ok=row["ok"] == "1", error=row["error"], index=int(row["index"]),
                  order=int(row["order"]))


# --- medians -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """The medians of one cell's successful samples."""

    image: str
    variant: str
    runtime: str
    link: str
    ok: int  # samples that succeeded (the medians are theirs)
    failed: int
    seconds: Mapping[str, float]  # phase -> median
    total_s: float  # median of the samples' totals (not the sum of the phases' medians)
    fetched_bytes: float  # median

    @property
    def key(self) -> CellKey:
        return (self.image, self.variant, self.runtime, self.link)


def summarize(samples: Iterable[Sample], image_order: Sequence[str] = ()) -> list[Cell]:
    """One cell per (image, variant, runtime, link) sampled, in report order: images as given
    (others after, by name), then link, variant and runtime in model's orders."""
    groups: dict[CellKey, list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.image, sample.variant, sample.runtime, sample.link),
                          []).append(sample)
    cells = [_cell(key, group) for key, group in groups.items()]
    return sorted(cells, key=lambda cell: _order_key(cell, image_order))


def _cell(key: CellKey, group: list[Sample]) -> Cell:
    good = [sample for sample in group if sample.ok]
    seconds = {phase: statistics.median(s.seconds.get(phase, 0.0) for s in good)
               for phase in PHASES} if good else {}
    return Cell(*key, ok=len(good), failed=len(group) - len(good), seconds=seconds,
                total_s=statistics.median(s.total_s for s in good) if good else float("nan"),
                fetched_bytes=statistics.median(s.fetched_bytes for s in good) if good
                else float("nan"))


def _rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def _order_key(cell: Cell, image_order: Sequence[str]) -> tuple[tuple[int, str], ...]:
    return (_rank(cell.image, image_order), (0, cell.link), _rank(cell.variant, VARIANTS),
            _rank(cell.runtime, RUNTIMES))


def ratio(value: float, reference: float | None) -> float | None:
    if reference is None or not reference > 0 or value != value:  # NaN: no good sample
        return None
    return value / reference


def versus_full(cell: Cell, cells: Mapping[CellKey, Cell]) -> float | None:
    """Total time over the same family's full pull of the gzip variant (None for that one)."""
    if cell.runtime == full_runtime(cell.runtime) and cell.variant == "gzip":
        return None
    full = cells.get((cell.image, "gzip", full_runtime(cell.runtime), cell.link))
    return ratio(cell.total_s, full.total_s if full else None)


def versus_go(cell: Cell, cells: Mapping[CellKey, Cell]) -> float | None:
    """Total time over the Go reference's of the same variant (None for Go and full rows)."""
    if cell.runtime in (go_runtime(cell.runtime), full_runtime(cell.runtime)):
        return None
    go = cells.get((cell.image, cell.variant, go_runtime(cell.runtime), cell.link))
    return ratio(cell.total_s, go.total_s if go else None)


# --- physical limit ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """The least time a variant's workload can take over a link."""

    image: str
    variant: str
    link: str
    seconds: float
    needed_bytes: int
    round_trips: int


def variant_limit(pushed: PushedVariant, link: Link) -> Limit | None:
    """needed_bytes at the link's rate plus the round trips; None on an unshaped link (its
    rate is the machine's, not a link's)."""
    if link.rate_mbit is None:
        return None
    seconds = pushed.needed_bytes * 8 / (link.rate_mbit * 1e6) + pushed.round_trips * (
        link.rtt_ms / 1000)
    return Limit(pushed.image, pushed.variant, link.name, seconds, pushed.needed_bytes,
                 pushed.round_trips)


def image_limits(pushed: Iterable[PushedVariant], links: Iterable[Link]
                 ) -> dict[tuple[str, str], Limit]:
    """Per (image, link): the limit of the image's best variant."""
    best: dict[tuple[str, str], Limit] = {}
    pushed = list(pushed)
    for link in links:
        for variant in pushed:
            limit = variant_limit(variant, link)
            key = (variant.image, link.name)
            if limit and (key not in best or limit.seconds < best[key].seconds):
                best[key] = limit
    return best


# --- markdown ----------------------------------------------------------------------------------

TABLE_HEADER = ("image", "variant", "runtime", "n", "pull s", "create s", "run s", "total s",
                "fetched MB", "vs full", "vs Go", "vs limit")


def markdown(samples: Sequence[Sample], links: Sequence[Link],
             pushed: Sequence[PushedVariant], image_order: Sequence[str] = ()) -> str:
    """The whole report: one table of medians per link, the physical limits, the failures."""
    cells = summarize(samples, image_order)
    by_key = {cell.key: cell for cell in cells}
    limits = image_limits(pushed, links)
    parts = ["# HelloBench results", "",
             "Medians of each cell's successful samples (n = ok/all). Ratios are total times, "
             "the row over its reference: *vs full* the same family's full pull of the gzip "
             "image, *vs Go* the Go reference on the same variant, *vs limit* the image's "
             "physical limit on that link.", ""]
    for link in links:
        rows = [_row(cell, by_key, limits) for cell in cells if cell.link == link.name]
        if rows:
            parts += [f"## {link.name}", "", f"Link: {link.describe()}.", "",
                      *_table(TABLE_HEADER, rows), ""]
    parts += _limit_section(limits, image_order)
    parts += _failure_section(samples)
    return "\n".join(parts).rstrip("\n") + "\n"


def _row(cell: Cell, cells: Mapping[CellKey, Cell],
         limits: Mapping[tuple[str, str], Limit]) -> list[str]:
    limit = limits.get((cell.image, cell.link))
    phases = [_seconds(cell.seconds.get(phase)) for phase in PHASES]
    return [cell.image, cell.variant, cell.runtime, f"{cell.ok}/{cell.ok + cell.failed}",
            *phases, _seconds(cell.total_s), _megabytes(cell.fetched_bytes),
            _times(versus_full(cell, cells)), _times(versus_go(cell, cells)),
            _times(ratio(cell.total_s, limit.seconds if limit else None))]


def _limit_section(limits: Mapping[tuple[str, str], Limit],
                   image_order: Sequence[str]) -> list[str]:
    if not limits:
        return []
    ordered = sorted(limits.values(), key=lambda lim: (_rank(lim.image, image_order), lim.link))
    rows = [[lim.image, lim.link, f"{lim.seconds:.2f}", lim.variant,
             _megabytes(lim.needed_bytes), str(lim.round_trips)] for lim in ordered]
    return ["## Physical limit", "",
            "Per image and shaped link, its best variant's needed compressed bytes over the "
            "link's rate plus the round trips that cannot overlap, one RTT each.", "",
            *_table(("image", "link", "limit s", "variant", "needed MB", "round trips"), rows),
            ""]


def _failure_section(samples: Sequence[Sample]) -> list[str]:
    failed = [sample for sample in samples if not sample.ok]
    if not failed:
        return []
    counts: dict[tuple[str, str, str], int] = {}
    for sample in failed:
        key = (f"{sample.image}/{sample.variant}", f"{sample.runtime}@{sample.link}",
               sample.error)
        counts[key] = counts.get(key, 0) + 1
    rows = [[cell, where, str(count), error.replace("|", "\\|")]
            for (cell, where, error), count in counts.items()]
    return [f"## Failed samples ({len(failed)} of {len(samples)})", "",
            *_table(("image/variant", "runtime@link", "count", "error"), rows), ""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(row) for row in rows)]


def _seconds(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def _megabytes(value: float) -> str:
    return "-" if value != value else f"{value / MB:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
