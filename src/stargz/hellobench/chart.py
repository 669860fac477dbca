"""HelloBench's chart: per image and runtime, the median pull, create and run stacked, a row of
panels per link (a panel per image), the image's physical limit as a dashed line.

A runtime shows one variant per image: the full runtimes the gzip image, the lazy ones their best
variant in CHART_VARIANTS order (the workload-optimized eStargz first), named under the bar.
matplotlib (the ``bench`` extra) is imported only here, when a chart is drawn.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stargz.errors import ConfigError
from stargz.hellobench.model import PHASES, RUNTIMES, Link
from stargz.hellobench.report import Cell, Limit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHART_VARIANTS = ("estargz-optimized", "ctr-remote-optimized", "zstdchunked-optimized",
                  "estargz", "gzip")
PHASE_COLOURS = {"pull": "#4c72b0", "create": "#dd8452", "run": "#55a868"}
SHORT_VARIANTS = {"estargz-optimized": "opt", "ctr-remote-optimized": "ctr-remote opt",
                  "zstdchunked-optimized": "zstd opt", "estargz": "no opt"}
INSTALL_HINT = "drawing the chart needs matplotlib: pip install 'stargz[bench]'"


def chart_cells(cells: Sequence[Cell], link: str) -> dict[tuple[str, str], Cell]:
    """(image, runtime) -> the cell its bar shows on ``link``."""
    chosen: dict[tuple[str, str], Cell] = {}
    for cell in cells:
        if cell.link != link or cell.ok == 0:
            continue
        wanted = ("gzip",) if cell.runtime.endswith("-full") else CHART_VARIANTS
        if cell.variant not in wanted:
            continue
        held = chosen.get((cell.image, cell.runtime))
        if held is None or wanted.index(cell.variant) < wanted.index(held.variant):
            chosen[(cell.image, cell.runtime)] = cell
    return chosen


def can_draw() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_chart(path: Path, cells: Sequence[Cell], links: Sequence[Link],
                limits: Mapping[tuple[str, str], Limit], images: Sequence[str]) -> None:
    """A grid: a row of panels per link, a panel per image (each with its own scale, so a
    small image's bars stay readable beside the large one's)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ConfigError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {link.name: chart_cells(cells, link.name) for link in links}
    rows = [link for link in links if chosen[link.name]]
    columns = [image for image in images
               if any(key[0] == image for row in rows for key in chosen[row.name])]
    if not rows:
        return
    figure, panels = plt.subplots(len(rows), len(columns), squeeze=False, layout="constrained",
                                  figsize=(max(6.0, 2.6 * len(columns) + 1), 3.4 * len(rows) + 0.8))
    for row, link in enumerate(rows):
        for column, image in enumerate(columns):
            _draw_panel(panels[row][column], chosen[link.name], image, limits.get(
                (image, link.name)))
        panels[row][0].set_ylabel(f"{link.name}\nseconds")
    handles, labels = _legend_entries(panels)
    figure.suptitle("HelloBench: cold pull + create + run, medians")
    # inside the top right panel: its right-hand bars are the lazy ones, short
    panels[0][-1].legend(handles, labels, loc="upper right", fontsize=7)
    notes = [line for link in rows for line in textwrap.wrap(
        link.describe(), width=int(figure.get_figwidth() * 22))]
    figure.supxlabel("\n".join(notes), fontsize=6, x=0.01, ha="left")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_panel(panel: Axes, chosen: Mapping[tuple[str, str], Cell], image: str,
                limit: Limit | None) -> None:
    runtimes = [name for name in RUNTIMES if (image, name) in chosen]
    for x, runtime in enumerate(runtimes):
        cell = chosen[(image, runtime)]
        bottom = 0.0
        for phase in PHASES:
            height = cell.seconds.get(phase, 0.0)
            panel.bar(x, height, bottom=bottom, width=0.75, color=PHASE_COLOURS[phase],
                      label=phase)
            bottom += height
        panel.annotate(f"{cell.total_s:.1f}", (x, cell.total_s), ha="center", va="bottom",
                       fontsize=7)
    if limit is not None:
        panel.axhline(limit.seconds, color="black", linestyle="dashed", linewidth=1,
                      label="physical limit")
    panel.set_xticks(range(len(runtimes)), [_label(chosen[(image, name)]) for name in runtimes],
                     fontsize=7, rotation=45, ha="right")
    panel.set_title(image, fontsize=10)
    panel.margins(y=0.12)


def _label(cell: Cell) -> str:
    if cell.variant == "gzip":
        return cell.runtime
    return f"{cell.runtime} ({SHORT_VARIANTS.get(cell.variant, cell.variant)})"


def _legend_entries(panels: Any) -> tuple[list[Any], list[str]]:
    """Each label once, from whichever panel has it."""
    entries: dict[str, Any] = {}
    for panel in panels.flat:
        for handle, label in zip(*panel.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)
