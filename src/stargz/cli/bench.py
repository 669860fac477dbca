"""`stargz bench`: HelloBench, a cold pull+create+run of real images through containerd and
podman, fully and lazily, over an emulated link; medians, ratios, physical limit and a chart.

Only the parser and the checks that need nothing are imported with the CLI; the bench itself
(``stargz.hellobench``, rich's progress bar, matplotlib) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stargz.errors import ConfigError, RuntimeIntegrationError
from stargz.hellobench.model import RUNTIMES, VARIANTS, Link

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers

IMAGES = ("python", "gcc", "server", "large")  # hellobench.images.IMAGE_NAMES, checked there
PEER_VARIANTS = ("ctr-remote-optimized",)  # converted by ctr-remote: a measuring instrument
PEER_BINARIES = ("stargzd", "stargzstore")  # what ../shared/peers/build.sh makes
DEFAULT_LINKS = ("100mbit-10ms", "unthrottled")
DEFAULT_SAMPLES = 3  # the full run with --peers: ~28 min here (2 samples took 18.8)
UNSHAPED_VARIANTS = ("estargz-optimized",)
QUICK_IMAGES = ("python",)
QUICK_VARIANTS = ("gzip", "estargz-optimized")
QUICK_RUNTIMES = ("containerd-full", "containerd-ours", "containerd-go")
QUICK_LINKS = ("100mbit-10ms",)
QUICK_SAMPLES = 2
LINK_NAME = re.compile(r"(?P<rate>\d+(?:\.\d+)?)mbit-(?P<rtt>\d+(?:\.\d+)?)ms")
# the tools every sample needs; podman and ctr-remote only when a runtime or variant uses them
BASE_TOOLS = ("docker-registry", "containerd", "ctr", "runc", "debootstrap", "umoci", "skopeo")

DESCRIPTION = """\
HelloBench: how long a container takes to start from an image in a registry, pulled in full and
lazily. Each image (python: python3 prints hello; gcc: compiles and runs hello.c; server:
PostgreSQL until it is ready; large: a >500 MB SciPy image of which python3 reads little) is
built from Debian packages (cached), pushed to a local registry as each variant (gzip; eStargz;
eStargz optimized for the workload by stargz optimize, and by ctr-remote with --peers;
zstd:chunked optimized), and run by each runtime over each link, every sample from a cold state
(daemons restarted, caches wiped, page cache dropped), in random order. Phases as the
reference's HelloBench: pull, create, run until the workload's ready line; bytes fetched are
what the registry sent through the link.

Which runtime runs which variant: the *-full runtimes (containerd's overlayfs pull, podman's
plain pull) run the gzip image: the baseline. The lazy runtimes (*-ours: our snapshotter or
store; *-go: the Go stargzd or stargz-store, with --peers) run every lazy variant over the
shaped links, and estargz-optimized only over unthrottled, where the machine's own cost is
measured (unless --variants is given: then every chosen variant). A lazy runtime given gzip
would only fall back to a full pull, so those pairs are not run.

Writes DIR/samples.csv (every sample), DIR/results.md (medians with ratios against the same
family's full pull and the Go reference, and the physical limit: the compressed bytes the
workload needs over the link's rate plus its unavoidable round trips) and DIR/chart.png
(matplotlib: pip install 'stargz[bench]'). Needs root. It prints its plan and estimated time
before the first sample: every default with --peers is 288 samples, under 30 minutes on 2
cores (with --samples 2, 192 samples, it took 19 minutes here); --quick with --peers 6
samples, under 2 minutes once the image is built."""


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser("bench", help="HelloBench: full vs lazy pull+create+run, charted",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("--quick", action="store_true",
                     help="a few minutes: python image, gzip and estargz-optimized, "
                          "containerd-full and -ours (and -go with --peers), 100mbit-10ms, "
                          "2 samples; the options below override these")
    cmd.add_argument("--output", type=Path, default=Path("hellobench"), metavar="DIR",
                     help="where samples.csv, results.md and chart.png go (default ./hellobench)")
    cmd.add_argument("--peers", type=Path, metavar="DIR",
                     help="the Go reference's stargzd and stargzstore (as "
                          "shared/peers/build.sh makes them): adds containerd-go, podman-go and "
                          "the ctr-remote-optimized variant")
    cmd.add_argument("--images", nargs="+", choices=IMAGES, metavar="IMAGE",
                     help=f"{', '.join(IMAGES)} (default all)")
    cmd.add_argument("--variants", nargs="+", choices=VARIANTS, metavar="VARIANT",
                     help=f"{', '.join(VARIANTS)} (default all; ctr-remote-optimized needs "
                          "--peers)")
    cmd.add_argument("--runtimes", nargs="+", choices=RUNTIMES, metavar="RUNTIME",
                     help=f"{', '.join(RUNTIMES)} (default all; the -go ones need --peers)")
    cmd.add_argument("--links", nargs="+", type=parse_link, metavar="LINK",
                     help="RATEmbit-RTTms (e.g. 100mbit-10ms, 20mbit-50ms) or unthrottled "
                          f"(default {' '.join(DEFAULT_LINKS)})")
    cmd.add_argument("--samples", type=_positive, metavar="N",
                     help=f"cold samples per cell (default {DEFAULT_SAMPLES}, --quick "
                          f"{QUICK_SAMPLES})")
    cmd.add_argument("--seed", type=int, metavar="S",
                     help="the shuffle's seed (default random; printed, to run the same order "
                          "again)")
    cmd.set_defaults(handler=run_bench)


def parse_link(text: str) -> Link:
    if text == "unthrottled":
        return Link(text, None, 0.0)
    match = LINK_NAME.fullmatch(text)
    if not match or float(match["rate"]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a link: RATEmbit-RTTms (e.g. 100mbit-10ms) or unthrottled")
    return Link(text, float(match["rate"]), float(match["rtt"]))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of samples")
    return value


def resolve_choices(args: argparse.Namespace) -> None:
    """Fill in the defaults (or --quick's); a choice that needs --peers without it is a
    ConfigError."""
    quick = args.quick
    # the defaults keep the unshaped link to the headline variant (see runner's docstring)
    args.unshaped_variants = None if args.variants else UNSHAPED_VARIANTS
    args.images = list(dict.fromkeys(args.images or (QUICK_IMAGES if quick else IMAGES)))
    args.variants = _names("variants", args.variants, QUICK_VARIANTS if quick else VARIANTS,
                           args.peers is not None)
    args.runtimes = _names("runtimes", args.runtimes, QUICK_RUNTIMES if quick else RUNTIMES,
                           args.peers is not None)
    links = args.links or [parse_link(name) for name in (QUICK_LINKS if quick else DEFAULT_LINKS)]
    args.links = list({link.name: link for link in links}.values())
    args.samples = args.samples or (QUICK_SAMPLES if quick else DEFAULT_SAMPLES)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)


def _names(option: str, chosen: Sequence[str] | None, defaults: Sequence[str],
           peers: bool) -> list[str]:
    if chosen is None:
        return [name for name in defaults if peers or not needs_peers(name)]
    wanting = [name for name in chosen if needs_peers(name)]
    if wanting and not peers:
        raise ConfigError(f"--{option} {' '.join(wanting)} needs --peers DIR (the Go "
                          "reference's binaries)")
    return list(dict.fromkeys(chosen))


def needs_peers(name: str) -> bool:
    return name.endswith("-go") or name in PEER_VARIANTS


def check_machine(args: argparse.Namespace) -> None:
    """Root, the tools the chosen runtimes and variants call, the peers' binaries."""
    if os.geteuid() != 0:
        raise RuntimeIntegrationError("stargz bench needs root (it runs containerd, podman, "
                                      "FUSE mounts and drops the page cache)")
    tools = list(BASE_TOOLS)
    if any(name.startswith("podman") for name in args.runtimes):
        tools.append("podman")
    if any(name in PEER_VARIANTS for name in args.variants) or any(
            name in ("containerd-ours", "containerd-go") for name in args.runtimes):
        tools.append("ctr-remote")  # rpull, and the ctr-remote-optimized conversion
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RuntimeIntegrationError(f"stargz bench needs {', '.join(missing)} on the PATH "
                                      "(bash scripts/setup installs them)")
    if args.peers is not None:
        absent = [name for name in PEER_BINARIES
                  if not os.access(args.peers / name, os.X_OK) or
                  not (args.peers / name).is_file()]
        if absent:
            raise ConfigError(f"--peers {args.peers} has no {', '.join(absent)} (build them with "
                              f"shared/peers/build.sh {args.peers})")


def run_bench(args: argparse.Namespace) -> int:
    resolve_choices(args)
    check_machine(args)
    from stargz.hellobench.session import run_session  # the bench's weight, only when it runs

    run_session(args)
    return 0
