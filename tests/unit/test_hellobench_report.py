"""HelloBench's report from Sample records: medians, ratios against the full pull and the Go
reference, the physical limit, the CSV round trip, the markdown's shape; the runner's plan
(which runtime runs which variant, random but seeded order) and its failed samples; the chart."""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from stargz.errors import FormatError
from stargz.hellobench import report, runner
from stargz.hellobench.chart import chart_cells, write_chart
from stargz.hellobench.model import Link, PushedVariant, Sample, Workload

SHAPED = Link("100mbit-10ms", 100, 10)
LOOPBACK = Link("unthrottled", None, 0)


def _sample(runtime: str, variant: str, pull: float, create: float, run: float,
            fetched: int, *, image: str = "python", link: str = SHAPED.name, index: int = 0,
            ok: bool = True) -> Sample:
    return Sample(image, variant, runtime, link, {"pull": pull, "create": create, "run": run},
                  fetched, ok=ok, error="" if ok else "RuntimeIntegrationError: ctr run failed",
                  index=index)


def _pushed(variant: str, needed: int, total: int = 68_000_000, trips: int = 6,
            image: str = "python") -> PushedVariant:
    return PushedVariant(image, variant, f"bench/{image}", variant, needed, total, trips)


SAMPLES = [
    _sample("containerd-full", "gzip", 6.0, 0.1, 0.4, 68_000_000, index=0),
    _sample("containerd-full", "gzip", 8.0, 0.1, 0.4, 68_000_000, index=1),
    _sample("containerd-full", "gzip", 7.0, 0.2, 0.3, 68_000_000, index=2),
    _sample("containerd-ours", "estargz-optimized", 0.3, 0.1, 0.6, 5_000_000, index=0),
    _sample("containerd-ours", "estargz-optimized", 0.2, 0.1, 0.5, 4_000_000, index=1),
    _sample("containerd-ours", "estargz-optimized", 9.0, 9.0, 9.0, 0, index=2, ok=False),
    _sample("containerd-go", "estargz-optimized", 0.4, 0.2, 0.6, 6_000_000),
    _sample("podman-full", "gzip", 10.0, 0.5, 0.5, 68_000_000),
    _sample("podman-ours", "estargz-optimized", 0.5, 0.1, 0.4, 5_000_000),
]


def _cells(samples: list[Sample]) -> dict[report.CellKey, report.Cell]:
    return {cell.key: cell for cell in report.summarize(samples)}


def test_medians_are_per_phase_and_of_the_totals_and_skip_failures() -> None:
    cells = _cells(SAMPLES)
    full = cells[("python", "gzip", "containerd-full", SHAPED.name)]
    assert (full.ok, full.failed) == (3, 0)
    assert full.seconds == {"pull": 7.0, "create": 0.1, "run": 0.4}
    assert full.total_s == pytest.approx(7.5)  # totals 6.5, 8.5, 7.5
    ours = cells[("python", "estargz-optimized", "containerd-ours", SHAPED.name)]
    assert (ours.ok, ours.failed) == (2, 1)
    assert ours.total_s == pytest.approx(0.9)  # median of 1.0 and 0.8; the failure's 27 s left out
    assert ours.fetched_bytes == 4_500_000


def test_ratios_against_the_own_familys_full_pull_and_the_go_reference() -> None:
    cells = _cells(SAMPLES)
    ours = cells[("python", "estargz-optimized", "containerd-ours", SHAPED.name)]
    assert report.versus_full(ours, cells) == pytest.approx(0.9 / 7.5)
    assert report.versus_go(ours, cells) == pytest.approx(0.9 / 1.2)
    podman = cells[("python", "estargz-optimized", "podman-ours", SHAPED.name)]
    assert report.versus_full(podman, cells) == pytest.approx(1.0 / 11.0)  # podman-full's
    assert report.versus_go(podman, cells) is None  # no podman-go sampled
    go = cells[("python", "estargz-optimized", "containerd-go", SHAPED.name)]
    assert report.versus_go(go, cells) is None
    assert report.versus_full(go, cells) == pytest.approx(1.2 / 7.5)
    full = cells[("python", "gzip", "containerd-full", SHAPED.name)]
    assert report.versus_full(full, cells) is None


def test_a_cell_whose_samples_all_failed_has_no_ratio() -> None:
    samples = [*SAMPLES, _sample("containerd-ours", "estargz", 1, 1, 1, 0, ok=False)]
    cells = _cells(samples)
    dead = cells[("python", "estargz", "containerd-ours", SHAPED.name)]
    assert dead.ok == 0 and dead.total_s != dead.total_s  # NaN
    assert report.versus_full(dead, cells) is None


def test_physical_limit_is_the_needed_bytes_over_the_rate_plus_round_trips() -> None:
    pushed = _pushed("estargz-optimized", needed=5_000_000, trips=6)
    limit = report.variant_limit(pushed, SHAPED)
    assert limit is not None
    assert limit.seconds == pytest.approx(5_000_000 * 8 / 100e6 + 6 * 0.010)  # 0.46 s
    assert report.variant_limit(pushed, LOOPBACK) is None


def test_an_images_limit_is_its_best_variants() -> None:
    pushed = [_pushed("gzip", 68_000_000, trips=3), _pushed("estargz", 9_000_000),
              _pushed("estargz-optimized", 5_000_000),
              _pushed("gzip", 1_000_000, image="gcc", trips=2)]
    limits = report.image_limits(pushed, [SHAPED, LOOPBACK])
    assert set(limits) == {("python", SHAPED.name), ("gcc", SHAPED.name)}
    assert limits[("python", SHAPED.name)].variant == "estargz-optimized"
    assert limits[("gcc", SHAPED.name)].seconds == pytest.approx(0.08 + 0.02)


def test_csv_round_trip_keeps_every_sample(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    ordered = [Sample(**{**vars(sample), "order": n}) for n, sample in enumerate(SAMPLES)]
    report.write_csv(ordered, path)
    assert report.read_csv(path) == ordered
    header = path.read_text().splitlines()[0]
    assert header == ",".join(report.CSV_FIELDS)
    assert len(path.read_text().splitlines()) == len(SAMPLES) + 1


def test_csv_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(FormatError, match="not a HelloBench samples file"):
        report.read_csv(path)


def test_markdown_has_a_table_per_link_the_limits_and_the_failures() -> None:
    samples = [*SAMPLES, _sample("containerd-full", "gzip", 2.0, 0.1, 0.3, 68_000_000,
                                 link=LOOPBACK.name)]
    pushed = [_pushed("gzip", 68_000_000, trips=3), _pushed("estargz-optimized", 5_000_000)]
    text = report.markdown(samples, [SHAPED, LOOPBACK], pushed, image_order=["python"])
    lines = text.splitlines()
    assert f"## {SHAPED.name}" in lines and f"## {LOOPBACK.name}" in lines
    assert f"Link: {SHAPED.describe()}." in lines
    shaped = lines[lines.index(f"## {SHAPED.name}"):lines.index(f"## {LOOPBACK.name}")]
    rows = [line for line in shaped if line.startswith("| python")]
    assert len(rows) == 5  # one per cell on that link: gzip rows first, in model order
    columns = [cell.strip() for cell in rows[2].strip("|").split("|")]
    assert columns[:4] == ["python", "estargz-optimized", "containerd-ours", "2/3"]
    assert columns[7:] == ["0.90", "4.50", "0.12x", "0.75x", f"{0.9 / 0.46:.2f}x"]
    assert all(line.count("|") == len(report.TABLE_HEADER) + 1
               for line in shaped if line.startswith("|"))
    assert "## Physical limit" in lines
    assert "| python | 100mbit-10ms | 0.46    | estargz-optimized | 5.00      | 6" in text
    assert "## Failed samples (1 of 10)" in lines
    assert "RuntimeIntegrationError: ctr run failed" in text


def test_the_plan_pairs_full_runtimes_with_gzip_and_lazy_ones_with_the_rest() -> None:
    trials = runner.plan(["python", "gcc"], ["gzip", "estargz", "estargz-optimized"],
                         ["containerd-full", "containerd-ours", "podman-go"],
                         [SHAPED, LOOPBACK], samples=3, seed=1)
    cells = {(t.image, t.variant, t.runtime, t.link) for t in trials}
    assert len(trials) == 2 * 2 * 3 * (1 + 2 + 2)
    assert len(cells) * 3 == len(trials)
    assert {(t.runtime, t.variant) for t in trials} == {
        ("containerd-full", "gzip"), ("containerd-ours", "estargz"),
        ("containerd-ours", "estargz-optimized"), ("podman-go", "estargz"),
        ("podman-go", "estargz-optimized")}
    again = runner.plan(["python", "gcc"], ["gzip", "estargz", "estargz-optimized"],
                        ["containerd-full", "containerd-ours", "podman-go"],
                        [SHAPED, LOOPBACK], samples=3, seed=1)
    assert again == trials
    other = runner.plan(["python", "gcc"], ["gzip", "estargz", "estargz-optimized"],
                        ["containerd-full", "containerd-ours", "podman-go"],
                        [SHAPED, LOOPBACK], samples=3, seed=2)
    assert other != trials and sorted(map(repr, other)) == sorted(map(repr, trials))


def test_the_unshaped_link_may_keep_lazy_runtimes_to_the_headline_variant() -> None:
    trials = runner.plan(["python"], ["gzip", "estargz", "estargz-optimized"],
                         ["containerd-full", "containerd-ours"], [SHAPED, LOOPBACK], samples=1,
                         seed=1, unshaped_variants=["estargz-optimized"])
    assert sorted((t.link, t.runtime, t.variant) for t in trials) == [
        (SHAPED.name, "containerd-full", "gzip"), (SHAPED.name, "containerd-ours", "estargz"),
        (SHAPED.name, "containerd-ours", "estargz-optimized"),
        (LOOPBACK.name, "containerd-full", "gzip"),
        (LOOPBACK.name, "containerd-ours", "estargz-optimized")]


def test_the_estimate_adds_the_bytes_over_the_link_to_the_overhead() -> None:
    pushed = {("python", "gzip"): _pushed("gzip", 50_000_000, total=50_000_000),
              ("python", "estargz"): _pushed("estargz", 5_000_000)}
    rates = {SHAPED.name: 100.0, LOOPBACK.name: None}
    full = runner.Trial("python", "gzip", "containerd-full", SHAPED.name, 0)
    lazy = runner.Trial("python", "estargz", "containerd-ours", SHAPED.name, 0)
    assert runner.estimate_s(full, pushed, rates) == pytest.approx(
        runner.OVERHEAD_S["containerd-full"] + 4.0 + 50 * runner.UNPACK_S_PER_MB)
    assert runner.estimate_s(lazy, pushed, rates) == pytest.approx(
        runner.OVERHEAD_S["containerd-ours"] + 0.4)


class _Link:
    host = "127.0.0.1:5999"

    def __init__(self) -> None:
        self.served_bytes = 0

    def reset(self) -> int:
        self.served_bytes = 0
        return 0


class _ScriptedRuntime:
    """A runtime whose run fails or serves bytes as scripted: what the runner does around it
    (start, count, stop even on failure) is what is tested here; the real runtimes are in
    tests/integration/test_hellobench_cli.py."""

    name = "containerd-ours"

    def __init__(self, link: _Link, fail: bool) -> None:
        self.link, self.fail = link, fail
        self.calls: list[str] = []

    def start(self, registry_host: str) -> None:
        self.calls.append(f"start {registry_host}")
        self.link.served_bytes = 99  # anything before the sample's own pull is not counted

    def run(self, variant: PushedVariant, workload: Workload) -> Mapping[str, float]:
        self.calls.append("run")
        if self.fail:
            raise OSError("ctr: exit status 1\nsecond line")
        self.link.served_bytes += 1234
        return {"pull": 1.0, "create": 0.5, "run": 0.25}

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.mark.parametrize("fail", (False, True))
def test_a_trial_counts_its_own_bytes_and_a_failure_is_recorded(fail: bool) -> None:
    link = _Link()
    runtime = _ScriptedRuntime(link, fail)
    trial = runner.Trial("python", "estargz", "containerd-ours", SHAPED.name, 2)
    sample = runner.run_trial(trial, 7, runtime=runtime, link=link,
                              variant=_pushed("estargz", 1), workload=Workload(("true",), ""))
    assert runtime.calls == [f"start {link.host}", "run", "stop"]
    assert (sample.index, sample.order, sample.ok) == (2, 7, not fail)
    if fail:
        assert sample.error == "OSError: ctr: exit status 1 second line"
    else:
        assert sample.fetched_bytes == 1234 and sample.total_s == 1.75


class _CleanupFetchRuntime(_ScriptedRuntime):
    """Ready 0.2 s after the call (its phases say), then a clean-up of 1.5 s after which a
    background fetch sends 5 MB more before run returns."""

    def run(self, variant: PushedVariant, workload: Workload) -> Mapping[str, float]:
        self.link.served_bytes += 1000
        time.sleep(1.5)
        self.link.served_bytes += 5_000_000
        time.sleep(0.1)
        return {"pull": 0.2, "create": 0.0, "run": 0.0}


def test_bytes_are_counted_to_the_ready_line_not_through_the_clean_up() -> None:
    link = _Link()
    trial = runner.Trial("python", "estargz", "podman-ours", SHAPED.name, 0)
    sample = runner.run_trial(trial, 0, runtime=_CleanupFetchRuntime(link, False), link=link,
                              variant=_pushed("estargz", 1), workload=Workload(("true",), ""))
    assert sample.ok and sample.fetched_bytes == 1000


def test_the_chart_shows_each_runtimes_headline_variant(tmp_path: Path) -> None:
    samples = [*SAMPLES, _sample("containerd-ours", "estargz", 1.0, 0.1, 0.5, 9_000_000)]
    cells = report.summarize(samples)
    chosen = chart_cells(cells, SHAPED.name)
    assert {key: cell.variant for key, cell in chosen.items()} == {
        ("python", "containerd-full"): "gzip", ("python", "containerd-ours"): "estargz-optimized",
        ("python", "containerd-go"): "estargz-optimized", ("python", "podman-full"): "gzip",
        ("python", "podman-ours"): "estargz-optimized"}
    path = tmp_path / "chart.png"
    limits = report.image_limits([_pushed("estargz-optimized", 5_000_000)], [SHAPED])
    write_chart(path, cells, [SHAPED, LOOPBACK], limits, ["python"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 300


def test_the_command_offers_the_images_the_builder_knows() -> None:
    from stargz.cli.bench import IMAGES
    from stargz.hellobench.images import IMAGE_NAMES

    assert IMAGES == IMAGE_NAMES
