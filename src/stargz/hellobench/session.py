"""One ``stargz bench`` session: images built, variants pushed to the bench's local registry,
one emulated link per --links, the planned samples run in their shuffled order, the results
written. The registry keeps its storage in the bench cache (``<cache>/registry``): a second run
finds every blob there and pushes only the manifests (the first pushes 20 variants in ~3 min).

Everything it starts (registry, link relays, runtimes' daemons) is stopped by the time it
returns, also on ^C, when the samples measured so far are written before it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from stargz.hellobench import report
from stargz.hellobench.chart import INSTALL_HINT, can_draw, write_chart
from stargz.hellobench.daemons import run_registry
from stargz.hellobench.images import build_images, cache_dir
from stargz.hellobench.link import LinkRelay
from stargz.hellobench.model import BenchImage, Link, PushedVariant, Runtime, Sample
from stargz.hellobench.runner import (
    ProgressBar,
    Trial,
    estimate_s,
    plan,
    progress_columns,
    run_plan,
)
from stargz.hellobench.runtimes import create_runtime
from stargz.hellobench.variants import push_variants

WORK_PARENT = Path("/var/tmp")  # roots of the runtimes' daemons: on disk, not in tmpfs
# Keep the runtimes' directories short (/var/tmp/hb-XXXXXXXX/podman-ours): under
# /var/tmp/stargz-bench-XXXXXXXX/runtimes/podman-ours every podman sample took 20 s longer
# (the container's end seen late, its socket paths past the 108 bytes a Unix socket may name?)


def run_session(args: argparse.Namespace) -> list[Sample]:
    console = Console(stderr=True)
    args.output.mkdir(parents=True, exist_ok=True)
    console.print(f"stargz bench: images {' '.join(args.images)}; variants "
                  f"{' '.join(args.variants)}; runtimes {' '.join(args.runtimes)}; "
                  f"{args.samples} samples; seed {args.seed}")
    for link in args.links:
        console.print(f"link {link.describe()}")
    if not can_draw():
        console.print(f"no chart: {INSTALL_HINT}")
    images = build_images(args.images, None, progress=console.print)
    work = Path(tempfile.mkdtemp(prefix="hb-", dir=WORK_PARENT))
    samples: list[Sample] = []
    pushed: list[PushedVariant] = []
    try:
        with run_registry(cache_dir() / "registry") as registry:
            started = time.monotonic()
            pushed = push_variants(images, args.variants, registry.host, peers=args.peers,
                                   work=work / "variants", progress=console.print)
            console.print(f"pushed {len(pushed)} variants in {time.monotonic() - started:.0f} s")
            with _relays(registry.host, args.links) as relays:
                _run(args, console, work, images, relays, pushed, samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if samples:
            write_results(args.output, samples, args.links, pushed, args.images, console)
    return samples


@contextlib.contextmanager
def _relays(registry_host: str, links: Sequence[Link]) -> Iterator[dict[str, LinkRelay]]:
    relays: dict[str, LinkRelay] = {}
    try:
        for link in links:
            relays[link.name] = LinkRelay(registry_host, link)
            relays[link.name].start()
        yield relays
    finally:
        for relay in relays.values():
            relay.stop()


def _run(args: argparse.Namespace, console: Console, work: Path, images: Mapping[str, BenchImage],
         relays: Mapping[str, LinkRelay], pushed: Sequence[PushedVariant],
         samples: list[Sample]) -> None:
    """The planned samples, appended to ``samples`` as they end (so ^C keeps them)."""
    by_key = {(variant.image, variant.variant): variant for variant in pushed}
    trials = [trial for trial in plan(args.images, args.variants, args.runtimes, args.links,
                                      args.samples, args.seed, args.unshaped_variants)
              if (trial.image, trial.variant) in by_key]
    rates = {link.name: link.rate_mbit for link in args.links}
    estimates = {trial: estimate_s(trial, by_key, rates) for trial in trials}
    cells = len({(t.image, t.variant, t.runtime, t.link) for t in trials})
    minutes, seconds = divmod(round(sum(estimates.values())), 60)
    console.print(f"plan: {len(trials)} samples ({cells} cells x {args.samples}), estimated "
                  f"{minutes} min {seconds:02d} s")
    runtimes: dict[str, Runtime] = {
        name: create_runtime(name, work / name, args.peers)
        for name in args.runtimes}
    workloads = {name: image.workload for name, image in images.items()}
    # off a terminal (CI, a log file) the line printed per sample is the progress
    with Progress(*progress_columns(), console=console,
                  disable=not console.is_terminal) as progress:
        bar = ProgressBar(progress, estimates)
        observer = _Keeper(bar, samples)
        run_plan(trials, runtimes=runtimes, links=relays, pushed=by_key, workloads=workloads,
                 observer=observer)


class _Keeper:
    """Passes each trial on to the progress bar and keeps its sample."""

    def __init__(self, bar: ProgressBar, samples: list[Sample]) -> None:
        self.bar, self.samples = bar, samples

    def starting(self, trial: Trial, order: int) -> None:
        self.bar.starting(trial, order)

    def finished(self, trial: Trial, sample: Sample) -> None:
        self.samples.append(sample)
        self.bar.finished(trial, sample)


def write_results(output: Path, samples: Sequence[Sample], links: Sequence[Link],
                  pushed: Sequence[PushedVariant], images: Sequence[str],
                  console: Console) -> None:
    """samples.csv, results.md (also printed to stdout) and chart.png under ``output``."""
    report.write_csv(samples, output / "samples.csv")
    text = report.markdown(samples, links, pushed, images)
    (output / "results.md").write_text(text, encoding="utf-8")
    print(text, end="", flush=True)
    written = ["samples.csv", "results.md"]
    if can_draw():
        write_chart(output / "chart.png", report.summarize(samples, images), links,
                    report.image_limits(pushed, links), images)
        written.append("chart.png")
    console.print(f"wrote {', '.join(written)} in {output}")
