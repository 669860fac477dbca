"""The records HelloBench's parts hand each other: what an image runs, where its variants are,
the link it runs over, and one measured sample."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

PHASES = ("pull", "create", "run")
# Variant names, in the order the report lists them.
VARIANTS = ("gzip", "estargz", "estargz-optimized", "ctr-remote-optimized",
            "zstdchunked-optimized")
# Runtime names, in the order the report lists them; "*-full" are the baselines, "*-go" the
# Go reference (only with --peers).
RUNTIMES = ("containerd-full", "containerd-ours", "containerd-go",
            "podman-full", "podman-ours", "podman-go")


@dataclass(frozen=True)
class Workload:
    """What a container of the image runs, and the line of its output that ends the run phase."""

    argv: tuple[str, ...]
    ready_line: str  # the run phase ends when a line of the output contains this
    env: tuple[str, ...] = ()  # KEY=VALUE
    cwd: str = "/"


@dataclass(frozen=True)
class BenchImage:
    """One benchmark image: its name (python, gcc, server, large), its workload, and the
    OCI layout (plain gzip layers) it was built into."""

    name: str
    workload: Workload
    layout: Path  # an OCI image layout directory, tag "latest"
    description: str = ""


@dataclass(frozen=True)
class PushedVariant:
    """One variant of an image in the bench registry."""

    image: str  # BenchImage.name
    variant: str  # one of VARIANTS
    repository: str  # "bench/python", no host: the link decides the host
    tag: str
    # compressed bytes the workload needs from this variant's blobs (manifest, config, footers
    # and TOCs, and the compressed spans holding the files it reads): the physical limit's bytes
    needed_bytes: int
    total_bytes: int  # every blob of the image, compressed (what a full pull fetches)
    round_trips: int  # requests that cannot overlap: connect, manifest, config, TOC, data


@dataclass(frozen=True)
class Link:
    """How the runtimes reach the registry: ``rate_mbit`` None means unthrottled."""

    name: str  # "100mbit-10ms", "unthrottled"
    rate_mbit: float | None
    rtt_ms: float

    def describe(self) -> str:
        if self.rate_mbit is None and not self.rtt_ms:
            return (f"{self.name}: loopback, no shaping (a TCP relay in front of the registry "
                    "only counts the bytes it sends)")
        rate = "no rate limit" if self.rate_mbit is None else f"{self.rate_mbit:g} Mbit/s each way"
        return (f"{self.name}: {rate} and {self.rtt_ms:g} ms round trip (half of it added each "
                "way), a token-bucket TCP relay on loopback in front of the registry, which also "
                "counts the bytes the registry sends")


@dataclass
class Sample:
    """One cold pull+create+run of one variant by one runtime over one link."""

    image: str
    variant: str
    runtime: str
    link: str
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    fetched_bytes: int = 0  # blob and manifest bytes the registry sent during the sample
    ok: bool = True
    error: str = ""  # one line when not ok
    index: int = 0  # which sample of its (image, variant, runtime, link) cell, from 0
    order: int = 0  # its position in the shuffled run order, from 0

    @property
    def total_s(self) -> float:
        return sum(self.seconds.get(phase, 0.0) for phase in PHASES)


class Runtime(Protocol):
    """A pull+run stack (containerd or podman, with or without a lazy layer service). ``start``
    brings its daemons up from a cold state (empty roots, page cache dropped); ``run`` measures
    one sample; ``stop`` stops every process it started, by PID."""

    name: str

    def start(self, registry_host: str) -> None: ...

    def run(self, variant: PushedVariant, workload: Workload) -> Mapping[str, float]: ...

    def stop(self) -> None: ...
