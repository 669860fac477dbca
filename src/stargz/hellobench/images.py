"""HelloBench's four images, built from Debian packages and cached between runs.

    python  python3 printing hello (bookworm minbase + python3: one layer)
    gcc     gcc compiling and running hello.c (+ gcc, libc6-dev: a second layer)
    server  PostgreSQL 15 with a cluster initialised at build time, ready when it says so
    large   numpy, scipy and pandas (over 500 MB with their dependencies) of which the
            workload, python3 printing hello, reads little

Every image is an OCI layout (plain gzip layers, tag "latest") under
``<cache>/images/<name>-v<version>/layout``, built once under a file lock and renamed into
place, so concurrent builds never race and an interrupted one leaves nothing half-built. The
base root filesystem (debootstrap) is cached once for all four. Before an image is cached its
workload runs in a chroot of the built rootfs and must print its ready line.

Why PostgreSQL and not nginx for the server: it prints a real ready line itself (nginx prints
nothing, and a wrapper polling for the socket measures the wrapper), it needs no network (a
Unix socket in /tmp, TCP off: containerd's ``ctr run`` gives a container a network namespace
with loopback down), and runs as the postgres user through ``setpriv`` (no PAM, no su), so
runc, containerd and podman run it as root alike. It needs /dev/shm, which all three mount.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stargz.errors import ConfigError, RuntimeIntegrationError
from stargz.hellobench.debian import (
    DEBIAN_TAR,
    apt_install,
    cached_path,
    chroot_mounts,
    debian_python_rootfs_tar,
    extract_tar,
)
from stargz.hellobench.model import BenchImage, Workload
from stargz.hellobench.oci import LayeredImage, blob_path, layout_manifest

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/stargz-bench")
CACHE_ENV = "STARGZ_BENCH_CACHE"
SMOKE_TIMEOUT_S = 180.0
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PG_BIN = "/usr/lib/postgresql/15/bin"
PG_DATA = "/var/lib/postgresql/bench"
AS_POSTGRES = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups")
HELLO_C = b'#include <stdio.h>\n\nint main(void) {\n    puts("hello from gcc");\n    return 0;\n}\n'

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """How one image is built: Debian packages on the base, files, then commands in a chroot."""

    name: str
    version: int  # bump when the recipe changes: the cached image is rebuilt
    description: str
    workload: Workload
    packages: tuple[str, ...] = ()
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    setup: tuple[tuple[str, ...], ...] = ()  # argv run in the chroot after the packages


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe(
        "python", 1, "python3 -c 'print(\"hello\")' on bookworm minbase + python3",
        Workload(("python3", "-c", 'print("hello")'), "hello", (PATH,)),
    ),
    Recipe(
        "gcc", 2, "gcc compiles /src/hello.c and runs it (bookworm + gcc, libc6-dev)",
        Workload(("sh", "-c", "gcc -o /tmp/hello /src/hello.c && /tmp/hello"),
                 "hello from gcc", (PATH,)),
        packages=("gcc", "libc6-dev"),
        files={"src/hello.c": (HELLO_C, 0o644)},
    ),
    Recipe(
        "server", 2, "PostgreSQL 15 (cluster initialised at build time), ready when it "
        "accepts connections on its Unix socket",
        # postgres logs to stderr: 2>&1 so that watchers of stdout (stargz optimize
        # --wait-on-line, ctr-remote) see the ready line too
        Workload(("sh", "-c", f"exec {' '.join(AS_POSTGRES)} {PG_BIN}/postgres -D {PG_DATA} 2>&1"),
                 "database system is ready to accept connections", (PATH,)),
        packages=("postgresql-15",),
        setup=(
            # the package's own cluster (when its postinst made one): unused weight
            ("sh", "-c", "! [ -d /etc/postgresql/15/main ] || pg_dropcluster 15 main"),
            ("install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", PG_DATA),
            (*AS_POSTGRES, f"{PG_BIN}/initdb", "-D", PG_DATA, "-A", "trust", "-U", "postgres"),
            # no TCP (loopback may be down in the container), the socket where anyone may write
            ("sh", "-c", f"printf \"listen_addresses = ''\\nunix_socket_directories = '/tmp'\\n\""
                         f" >> {PG_DATA}/postgresql.conf"),
        ),
    ),
    # scipy brings its compiler (pythran: gcc, boost, python3-dev); matplotlib would bring
    # another 700 MB (1.3 GB in all, too slow to pull whole several times in a 30-minute run)
    Recipe(
        "large", 3, "numpy, scipy and pandas with their dependencies (pythran, gcc, boost); "
        "the workload, python3 printing hello, reads little of it",
        Workload(("python3", "-c", 'print("hello")'), "hello", (PATH,)),
        packages=("python3-scipy", "python3-pandas"),
    ),
)}
IMAGE_NAMES = tuple(RECIPES)


@dataclass(frozen=True)
class ImageSize:
    """What a built image weighs: its layers compressed (gzip) and uncompressed."""

    layers: int
    compressed_bytes: int
    uncompressed_bytes: int
    build_seconds: float


def cache_dir() -> Path:
    """``$STARGZ_BENCH_CACHE``, default /var/cache/stargz-bench."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def build_images(names: Iterable[str], cache: Path | None = None,
                 progress: Progress | None = None) -> dict[str, BenchImage]:
    """The named images (``IMAGE_NAMES`` order kept), built when not cached yet.

    ``progress`` gets one line per step (e.g. "building large: apt-get install ...").
    """
    wanted = list(names)
    unknown = sorted(set(wanted) - set(RECIPES))
    if unknown:
        raise ConfigError(f"unknown bench image {', '.join(unknown)} (known: "
                          f"{', '.join(IMAGE_NAMES)})")
    cache = cache or cache_dir()
    say = progress or (lambda line: log.info("%s", line))
    return {name: build_image(RECIPES[name], cache, say) for name in IMAGE_NAMES
            if name in wanted}


def build_image(recipe: Recipe, cache: Path, progress: Progress) -> BenchImage:
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    entry = f"{recipe.name}-v{recipe.version}"
    if not (images / entry).exists():
        if not (cache / "base" / DEBIAN_TAR).exists():
            progress("building the Debian base (debootstrap bookworm minbase + python3, once)")
        base = debian_python_rootfs_tar(cache / "base")

        def build(work: Path, out: Path) -> None:
            progress(f"building the {recipe.name} image (Debian packages, once: cached after)")
            started = time.monotonic()
            _build_layout(recipe, base, out / "layout", progress)
            _write_size(out, time.monotonic() - started)

        cached_path(images, entry, build)
        _remove_older_versions(images, recipe)
    image = BenchImage(recipe.name, recipe.workload, images / entry / "layout",
                       recipe.description)
    size = image_size(image)
    progress(f"{recipe.name}: {size.layers} layers, {size.uncompressed_bytes / 1e6:.0f} MB "
             f"({size.compressed_bytes / 1e6:.0f} MB gzip)")
    return image


def _remove_older_versions(images: Path, recipe: Recipe) -> None:
    for old in images.glob(f"{recipe.name}-v*"):
        if old.name != f"{recipe.name}-v{recipe.version}":
            shutil.rmtree(old, ignore_errors=True)


def image_size(image: BenchImage) -> ImageSize:
    """The size recorded when the image was built."""
    record = json.loads((image.layout.parent / "size.json").read_text())
    return ImageSize(**record)


def _build_layout(recipe: Recipe, base: Path, layout: Path, progress: Progress) -> None:
    with LayeredImage(layout) as image:
        extract_tar(base, image.rootfs)
        image.commit()
        if recipe.packages or recipe.files or recipe.setup:
            if recipe.packages:
                progress(f"building {recipe.name}: apt-get install {' '.join(recipe.packages)}")
                apt_install(image.rootfs, recipe.packages, update=True)
            for path, (data, mode) in recipe.files.items():
                target = image.rootfs / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(mode)
            _run_setup(image.rootfs, recipe.setup)
            image.commit()
        workload = recipe.workload
        image.configure(workload.argv, workload.env, workload.cwd)
        progress(f"building {recipe.name}: checking that its workload prints its ready line")
        # after the last commit: what the check writes (postgres' pid file, WAL) is not kept
        smoke_check(image.rootfs, workload)


def _run_setup(root: Path, steps: Sequence[Sequence[str]]) -> None:
    with chroot_mounts(root):
        for argv in steps:
            done = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                                  check=False, env={"PATH": PATH.split("=", 1)[1]})
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeIntegrationError(f"{argv[0]} in the image failed: {last}")


def smoke_check(root: Path, workload: Workload, timeout: float = SMOKE_TIMEOUT_S) -> None:
    """Run `workload` in a chroot of `root` until it prints its ready line; then stop it."""
    env = dict(pair.split("=", 1) for pair in workload.env)
    with chroot_mounts(root):
        proc = subprocess.Popen(
            ["chroot", str(root), "sh", "-c", 'cd "$0" && exec "$@"', workload.cwd,
             *workload.argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            seen = _read_until(proc, workload.ready_line)
        finally:
            timer.cancel()
            _stop_group(proc)
    if seen is None:
        raise RuntimeIntegrationError(
            f"the workload {' '.join(workload.argv)} never printed {workload.ready_line!r}")


def _read_until(proc: subprocess.Popen[bytes], ready_line: str) -> str | None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        if ready_line in line:
            return line
    return None


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (postgres' fast shutdown), then SIGKILL: the whole session, by its leader's id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _write_size(out: Path, seconds: float) -> None:
    layout = out / "layout"
    _digest, manifest = layout_manifest(layout)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    compressed = sum(int(layer["size"]) for layer in layers)
    uncompressed = sum(_gunzipped_size(blob_path(layout, str(layer["digest"])))
                       for layer in layers)
    record = ImageSize(len(layers), compressed, uncompressed, round(seconds, 1))
    (out / "size.json").write_text(json.dumps(record.__dict__) + "\n")


def _gunzipped_size(blob: Path) -> int:
    with subprocess.Popen(["gzip", "-dc", str(blob)], stdout=subprocess.PIPE) as gunzip:
        out = gunzip.stdout
        assert out is not None
        total = 0
        while piece := out.read(1 << 20):
            total += len(piece)
    if gunzip.returncode != 0:
        raise RuntimeIntegrationError(f"gzip -dc {blob.name} failed ({gunzip.returncode})")
    return total
