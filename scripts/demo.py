"""The main job, end to end on this machine: lazy pulling against a plain full pull.

Starts a local registry, builds a real image (debootstrap bookworm + python3; cached after the
first run), pushes it, converts it to eStargz with `stargz convert`, then starts containerd with
our snapshotter and runs `python3 -c 'print("hello")'` twice:

  lazy: `stargz rpull` (layers mounted lazily through FUSE) + `ctr run --snapshotter stargz`
  full: `ctr images pull` of the original gzip image (overlayfs) + `ctr run`

and prints how long pull and run took and how many bytes the registry served for each.
Run as root after `bash scripts/setup`:  .venv/bin/python scripts/demo.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.containerd import Containerd, SnapshotterProcess  # noqa: E402
from tests.support.images import (  # noqa: E402
    busybox_rootfs_tar,
    debian_python_rootfs_tar,
    extract_tar,
    make_oci_image,
)
from tests.support.registry import RunningRegistry, blob_bytes_served, run_registry  # noqa: E402

STARGZ = str(Path(sys.executable).with_name("stargz"))
HELLO = ("python3", "-c", 'print("hello")')
MOTD = ("cat", "/etc/motd")  # the busybox image has no python3


@dataclass
class Outcome:
    pull_s: float
    run_s: float
    fetched: int
    output: str


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    return elapsed, result.stdout


def build_image(work: Path, small: bool, workload: Sequence[str]) -> Path:
    step("building the image (" + ("busybox" if small else "debootstrap bookworm + python3")
         + "; cached after the first run)")
    rootfs = work / "rootfs"
    extract_tar(busybox_rootfs_tar() if small else debian_python_rootfs_tar(), rootfs)
    layout = make_oci_image(rootfs, work / "oci", "v1", workload)
    return Path(layout.removeprefix("oci:"))


def push_and_convert(layout: Path, registry: RunningRegistry) -> tuple[str, str]:
    plain = f"{registry.host}/demo/app:gzip"
    lazy = f"{registry.host}/demo/app:estargz"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}",
                    f"docker://{plain}"], check=True)
    step(f"converting {plain} to eStargz with `stargz convert`")
    elapsed, _ = timed([STARGZ, "convert", "--plain-http", "--oci", plain, lazy])
    print(f"    converted in {elapsed:.2f}s")
    return plain, lazy


def lazy_run(
    ctd: Containerd, registry: RunningRegistry, image: str, workload: Sequence[str]
) -> Outcome:
    step(f"lazy pull: stargz rpull {image}, then ctr run --snapshotter stargz")
    before = blob_bytes_served(registry)
    env = ctd.env()
    pull_s, _ = timed([STARGZ, "rpull", "--plain-http", image], env)
    run_s, output = timed(["ctr", "run", "--rm", "--snapshotter", "stargz", image, "demo-lazy",
                           *workload], env)
    return Outcome(pull_s, run_s, blob_bytes_served(registry) - before, output.strip())


def full_run(
    ctd: Containerd, registry: RunningRegistry, image: str, workload: Sequence[str]
) -> Outcome:
    step(f"full pull: ctr images pull {image} (overlayfs), then ctr run")
    before = blob_bytes_served(registry)
    env = ctd.env()
    pull_s, _ = timed(["ctr", "images", "pull", "--plain-http", image], env)
    run_s, output = timed(["ctr", "run", "--rm", image, "demo-full", *workload], env)
    return Outcome(pull_s, run_s, blob_bytes_served(registry) - before, output.strip())


def report(lazy: Outcome, full: Outcome, image_bytes: int) -> None:
    print()
    print(f"{'':22}{'pull s':>8}{'run s':>8}{'total s':>9}{'fetched MB':>12}  output")
    for name, o in (("lazy (stargz)", lazy), ("full pull (overlayfs)", full)):
        print(f"{name:22}{o.pull_s:8.2f}{o.run_s:8.2f}{o.pull_s + o.run_s:9.2f}"
              f"{o.fetched / 1e6:12.2f}  {o.output}")
    print()
    share = 100 * lazy.fetched / image_bytes if image_bytes else 0
    print(f"lazy pulling fetched {lazy.fetched / 1e6:.2f} MB of a {image_bytes / 1e6:.2f} MB "
          f"eStargz layer ({share:.1f}%); pull+run took "
          f"{(lazy.pull_s + lazy.run_s) / (full.pull_s + full.run_s):.2f}x the full pull's time")


def layer_bytes(registry: RunningRegistry, image: str) -> int:
    repo, tag = image.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request) as answer:
        manifest = json.loads(answer.read())
    return sum(int(layer["size"]) for layer in manifest["layers"])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="a busybox image instead of debootstrap + python3 (no python run)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (FUSE, overlayfs and containerd need it)")
    workload = MOTD if args.small else HELLO
    with tempfile.TemporaryDirectory(prefix="stargz-demo-") as tmp:
        work = Path(tmp)
        layout = build_image(work / "image", args.small, workload)
        with run_registry(work / "registry") as registry:
            step(f"registry at {registry.host}")
            plain, lazy = push_and_convert(layout, registry)
            config = work / "snapshotter.toml"
            # No background fetch, so the bytes counted are those the workload needed.
            config.write_text(f'[lazy]\nplain_http = ["{registry.host}"]\n'
                              "no_background_fetch = true\n")
            snapshotter = SnapshotterProcess(work / "stargz.sock", work / "snap-root",
                                             work / "snapshotter.log",
                                             extra_args=["--config", str(config)])
            snapshotter.start()  # before containerd: its gRPC backoff is slow to retry
            ctd = Containerd(work / "containerd", snapshotter.address)
            ctd.start()
            try:
                lazy_outcome = lazy_run(ctd, registry, lazy, workload)
                full_outcome = full_run(ctd, registry, plain, workload)
            finally:
                ctd.stop()
                snapshotter.stop()
            report(lazy_outcome, full_outcome, layer_bytes(registry, lazy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
