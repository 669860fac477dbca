"""HelloBench's runner: plans the samples, shuffles them, and runs each from a cold state.

Which runtime runs which variant (the table's rows): a full runtime (``*-full``) pulls the gzip
image, the baseline every lazy row is compared with; a lazy runtime (``*-ours``, ``*-go``) runs
each lazy variant (the eStargz and zstd:chunked ones). A lazy runtime on the gzip image would only
fall back to a full pull, and a full runtime on a lazy variant would only pull a bigger gzip
image, so neither is planned. Every sample starts its runtime from a cold state
(``Runtime.start``), measures one pull+create+run through the emulated link, and stops it; a
sample that fails is recorded with its one-line error and the run goes on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stargz.hellobench.model import PHASES, PushedVariant, Runtime, Sample, Workload
from stargz.printable import printable

FULL_VARIANT = "gzip"
# Seconds a sample costs beyond moving its bytes, measured on this 2-core machine: daemons
# started cold (page cache dropped), container created, workload run, everything stopped.
OVERHEAD_S = {"full": 4.0, "ours": 6.0, "go": 5.0}
UNSHAPED_MBIT = 800.0  # what a full pull over loopback reaches here (gzip and unpack bound)
UNPACK_S_PER_MB = 0.03  # a full pull's decompress + unpack, per compressed MB


class Endpoint(Protocol):
    """The emulated link a sample runs over (hellobench.link.LinkRelay)."""

    host: str

    def reset(self) -> int: ...

    @property
    def served_bytes(self) -> int: ...


@dataclass(frozen=True)
class Trial:
    """One planned sample."""

    image: str
    variant: str
    runtime: str
    link: str
    index: int  # its number within its cell


def is_full(runtime: str) -> bool:
    return runtime.endswith("-full")


def runs(runtime: str, variant: str) -> bool:
    """Whether the plan pairs this runtime with this variant (see the module's docstring)."""
    return (variant == FULL_VARIANT) == is_full(runtime)


def plan(images: Sequence[str], variants: Sequence[str], runtimes: Sequence[str],
         links: Sequence[str], samples: int, seed: int) -> list[Trial]:
    """Every trial, in a random order fixed by ``seed``."""
    trials = [Trial(image, variant, runtime, link, index)
              for image in images for variant in variants for runtime in runtimes
              if runs(runtime, variant) for link in links for index in range(samples)]
    random.Random(seed).shuffle(trials)
    return trials


def estimate_s(trial: Trial, pushed: Mapping[tuple[str, str], PushedVariant],
               rates: Mapping[str, float | None]) -> float:
    """Rough seconds one trial takes: its overhead plus its bytes over the link."""
    variant = pushed.get((trial.image, trial.variant))
    overhead = OVERHEAD_S[trial.runtime.rsplit("-", 1)[-1]] if "-" in trial.runtime else 5.0
    if variant is None:
        return overhead
    rate = rates.get(trial.link) or UNSHAPED_MBIT
    moved = variant.total_bytes if is_full(trial.runtime) else variant.needed_bytes
    unpack = variant.total_bytes / 1e6 * UNPACK_S_PER_MB if is_full(trial.runtime) else 0.0
    return overhead + moved * 8 / (rate * 1e6) + unpack


def run_trial(trial: Trial, order: int, *, runtime: Runtime, link: Endpoint,
              variant: PushedVariant, workload: Workload) -> Sample:
    """One cold sample; any failure is recorded in the sample, never raised (but ^C is)."""
    sample = Sample(trial.image, trial.variant, trial.runtime, trial.link, index=trial.index,
                    order=order)
    try:
        try:
            runtime.start(link.host)
            link.reset()
            seconds = runtime.run(variant, workload)
            sample.fetched_bytes = link.served_bytes
        finally:
            runtime.stop()
        sample.seconds = {phase: float(seconds[phase]) for phase in PHASES}
    except Exception as err:  # one failed sample must not end the run
        sample.ok = False
        sample.error = one_line(err)
    return sample


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return printable(f"{type(err).__name__}: {text}")[:300]


class Observer(Protocol):
    """Hears of each trial as it starts and ends (the progress bar)."""

    def starting(self, trial: Trial, order: int) -> None: ...

    def finished(self, trial: Trial, sample: Sample) -> None: ...


def run_plan(trials: Sequence[Trial], *, runtimes: Mapping[str, Runtime],
             links: Mapping[str, Endpoint], pushed: Mapping[tuple[str, str], PushedVariant],
             workloads: Mapping[str, Workload], observer: Observer | None = None
             ) -> list[Sample]:
    """Run the trials in their order, each from a cold state."""
    samples = []
    for order, trial in enumerate(trials):
        if observer is not None:
            observer.starting(trial, order)
        sample = run_trial(trial, order, runtime=runtimes[trial.runtime],
                           link=links[trial.link], variant=pushed[(trial.image, trial.variant)],
                           workload=workloads[trial.image])
        samples.append(sample)
        if observer is not None:
            observer.finished(trial, sample)
    return samples


class ProgressBar:
    """A rich progress bar over the plan, advanced by each trial's estimate so that its ETA
    weighs a large image's full pull more than a small lazy start."""

    def __init__(self, progress: Progress, estimates: Mapping[Trial, float]) -> None:
        self.progress = progress
        self.estimates = estimates
        self.failed = 0
        self.task = progress.add_task("samples", total=sum(estimates.values()) or 1.0,
                                      done=0, count=len(estimates), failed="")

    def starting(self, trial: Trial, order: int) -> None:
        self.progress.update(self.task, description=(
            f"{trial.image}/{trial.variant} {trial.runtime} @ {trial.link}"), done=order)

    def finished(self, trial: Trial, sample: Sample) -> None:
        self.failed += not sample.ok
        self.progress.update(self.task, advance=self.estimates.get(trial, 0.0),
                             failed=f" {self.failed} failed" if self.failed else "")


def progress_columns() -> tuple[ProgressColumn, ...]:
    return (TextColumn("{task.fields[done]}/{task.fields[count]}{task.fields[failed]}"),
            BarColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.description}"))
