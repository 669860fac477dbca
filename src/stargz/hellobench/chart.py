"""HelloBench's chart: per image and runtime, the median pull, create and run stacked, one panel
per link, the image's physical limit as a marker.

A runtime shows one variant per image: the full runtimes the gzip image, the lazy ones their best
variant in CHART_VARIANTS order (the workload-optimized eStargz first), named under the bar.
matplotlib (the ``bench`` extra) is imported only here, when a chart is drawn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.errors import ConfigError
from stargz.hellobench.model import PHASES, RUNTIMES, Link
from stargz.hellobench.report import Cell, Limit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHART_VARIANTS = ("estargz-optimized", "ctr-remote-optimized", "zstdchunked-optimized",
                  "estargz", "gzip")
PHASE_COLOURS = {"pull": "#4c72b0", "create": "#dd8452", "run": "#55a868"}
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
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ConfigError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [link for link in links if chart_cells(cells, link.name)]
    if not shown:
        return
    bars = max(len(chart_cells(cells, link.name)) for link in shown)
    figure, panels = plt.subplots(len(shown), 1, squeeze=False,
                                  figsize=(max(8.0, 0.55 * bars + 2), 4.2 * len(shown)))
    for panel, link in zip(panels[:, 0], shown, strict=True):
        _draw_panel(panel, chart_cells(cells, link.name), link, limits, images)
    figure.suptitle("HelloBench: cold pull, create and run (medians)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_panel(panel: Axes, chosen: Mapping[tuple[str, str], Cell], link: Link,
                limits: Mapping[tuple[str, str], Limit], images: Sequence[str]) -> None:
    positions: list[float] = []
    labels: list[str] = []
    x = 0.0
    for image in [name for name in images if any(key[0] == name for key in chosen)]:
        first = x
        for runtime in [name for name in RUNTIMES if (image, name) in chosen]:
            cell = chosen[(image, runtime)]
            _stack(panel, x, cell, legend=not positions)
            positions.append(x)
            labels.append(f"{image}\n{runtime}\n{cell.variant}")
            x += 1
        limit = limits.get((image, link.name))
        if limit is not None:
            panel.hlines(limit.seconds, first - 0.4, x - 0.6, colors="black",
                         linestyles="dashed", label="physical limit" if first == 0 else "_limit")
        x += 0.8  # a gap between images
    panel.set_xticks(positions, labels, fontsize=6)
    panel.set_ylabel("seconds")
    panel.set_title(link.describe(), fontsize=9)
    panel.legend(fontsize=7, loc="upper left")


def _stack(panel: Axes, x: float, cell: Cell, *, legend: bool) -> None:
    bottom = 0.0
    for phase in PHASES:
        height = cell.seconds.get(phase, 0.0)
        panel.bar(x, height, bottom=bottom, width=0.8, color=PHASE_COLOURS[phase],
                  label=phase if legend else None)
        bottom += height
