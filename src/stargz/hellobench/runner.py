"""HelloBench's runner: plans the samples, shuffles them, and runs each from a cold state.

Which runtime runs which variant (the table's rows): a full runtime (``*-full``) pulls the gzip
image, the baseline every lazy row is compared with; a lazy runtime (``*-ours``, ``*-go``) runs
each lazy variant (the eStargz and zstd:chunked ones). A lazy runtime on the gzip image would only
fall back to a full pull, and a full runtime on a lazy variant would only pull a bigger gzip
image, so neither is planned. On an unshaped link the lazy runtimes may be limited to the
headline variant (``unshaped_variants``): there the table shows the machine's own cost, which
one variant shows as well as four, and the full run keeps to 30 minutes.
Every sample starts its runtime from a cold state (``Runtime.start``), measures one
pull+create+run through the emulated link, and stops it; a sample that fails is recorded with
its one-line error and the run goes on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
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

from stargz.hellobench.model import PHASES, Link, PushedVariant, Runtime, Sample, Workload
from stargz.printable import printable

FULL_VARIANT = "gzip"
# Wall seconds a sample costs besides moving (and for a full pull unpacking and removing) its
# bytes, per runtime, measured in a full run on this 2-core machine (load average 3-5): cold
# start, create, run, stop; a lazy sample's phases are most of it.
OVERHEAD_S = {"containerd-full": 2.0, "containerd-ours": 3.0, "containerd-go": 2.5,
              "podman-full": 2.0, "podman-ours": 3.0, "podman-go": 2.5}
UNSHAPED_MBIT = 1000.0  # loopback: a full pull is bound by decompressing and unpacking
# a full pull's decompress + unpack per compressed MB (python, 68 MB: 8.5 s at 100 Mbit/s of
# which 5.5 s moving bytes; large, 292 MB: 35.5 s of which 23.3 s). With these a 192-sample run
# was estimated at 19.8 min and took 18.2 (peers, all defaults, 2 samples, load average 3-5).
UNPACK_S_PER_MB = 0.05
TIMELINE_PERIOD_S = 0.02
READY_SLACK_S = 0.1


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
         links: Sequence[Link], samples: int, seed: int,
         unshaped_variants: Collection[str] | None = None) -> list[Trial]:
    """Every trial, in a random order fixed by ``seed``; on a link without a rate the lazy
    runtimes run only ``unshaped_variants`` (None: every lazy variant)."""
    trials = [Trial(image, variant, runtime, link.name, index)
              for image in images for variant in variants for runtime in runtimes
              if runs(runtime, variant) for link in links
              if _on_link(runtime, variant, link, unshaped_variants)
              for index in range(samples)]
    random.Random(seed).shuffle(trials)
    return trials


def _on_link(runtime: str, variant: str, link: Link,
             unshaped_variants: Collection[str] | None) -> bool:
    return (is_full(runtime) or link.rate_mbit is not None or unshaped_variants is None
            or variant in unshaped_variants)


def estimate_s(trial: Trial, pushed: Mapping[tuple[str, str], PushedVariant],
               rates: Mapping[str, float | None]) -> float:
    """Rough wall seconds one trial takes: its overhead plus its bytes over the link (and, for
    a full pull, their unpacking)."""
    overhead = OVERHEAD_S.get(trial.runtime, 5.0)
    variant = pushed.get((trial.image, trial.variant))
    if variant is None:
        return overhead
    rate_bytes_s = (rates.get(trial.link) or UNSHAPED_MBIT) * 1e6 / 8
    if is_full(trial.runtime):
        return (overhead + variant.total_bytes / rate_bytes_s
                + variant.total_bytes / 1e6 * UNPACK_S_PER_MB)
    return overhead + variant.needed_bytes / rate_bytes_s


class ByteTimeline:
    """The link's byte count sampled on a thread while a runtime runs, so that the bytes at the
    workload's ready line can be read after the runtime's clean-up, during which a lazy layer
    service starts its background fetch of whole layers (podman's clean-up takes seconds on a
    loaded machine: 68 MB counted instead of 4.8 MB)."""

    def __init__(self, link: Endpoint) -> None:
        self.link = link
        self.points: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="byte timeline", daemon=True)

    def __enter__(self) -> ByteTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.points.append((time.monotonic(), self.link.served_bytes))
            if self._done.wait(TIMELINE_PERIOD_S):
                self.points.append((time.monotonic(), self.link.served_bytes))
                return

    def at(self, moment: float) -> int:
        """The count at ``moment`` (the first sample at or after it)."""
        return next((count for when, count in self.points if when >= moment),
                    self.points[-1][1] if self.points else 0)


def run_trial(trial: Trial, order: int, *, runtime: Runtime, link: Endpoint,
              variant: PushedVariant, workload: Workload) -> Sample:
    """One cold sample; any failure is recorded in the sample, never raised (but ^C is).

    Its bytes are those the registry sent from the pull's start to the workload's ready line:
    the runtime's phases run back to back from the call of ``run``, so the ready line comes
    at their sum after it (a little later: a few ms to spawn each command, READY_SLACK_S)."""
    sample = Sample(trial.image, trial.variant, trial.runtime, trial.link, index=trial.index,
                    order=order)
    try:
        try:
            runtime.start(link.host)
            link.reset()
            with ByteTimeline(link) as timeline:
                called = time.monotonic()
                seconds = runtime.run(variant, workload)
            ready = called + sum(seconds[phase] for phase in PHASES)
            sample.fetched_bytes = timeline.at(ready + READY_SLACK_S)
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
        outcome = (f"{sample.total_s:.2f} s, {sample.fetched_bytes / 1e6:.1f} MB" if sample.ok
                   else f"failed: {sample.error}")
        self.progress.console.print(
            f"[{sample.order + 1}/{len(self.estimates)}] {trial.image}/{trial.variant} "
            f"{trial.runtime} @ {trial.link}: {outcome}", markup=False, highlight=False)
        self.progress.update(self.task, advance=self.estimates.get(trial, 0.0),
                             done=sample.order + 1,
                             failed=f" {self.failed} failed" if self.failed else "")


def progress_columns() -> tuple[ProgressColumn, ...]:
    return (TextColumn("{task.fields[done]}/{task.fields[count]}{task.fields[failed]}"),
            BarColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.description}"))
