"""Each bench image's variants, converted once (cached) and pushed to the bench registry.

    gzip                   the built layout as it is (a full pull's baseline)
    estargz                ``stargz convert``: eStargz, no workload knowledge
    estargz-optimized      ``stargz optimize``: the workload run under runc, the files it opened
                           first in each layer, then the prefetch landmark (its access record is
                           kept: the physical limit of every variant of the image is taken from it)
    ctr-remote-optimized   ``ctr-remote images optimize`` (the Go reference, Debian's package) in
                           a containerd of its own: only with --peers, as the Go runtimes
    zstdchunked-optimized  ``stargz optimize --zstd-chunked --record-in``: the same record, no
                           second run of the workload

Converted layouts are cached under ``<cache>/variants/<image>-<layout digest>-v<N>/<variant>``
(the layout digest names the built image, so a rebuilt image converts again), under the same
lock-and-rename as the images. Pushing is ``skopeo copy --preserve-digests`` of a layout: the
registry holds byte for byte what the figures were computed from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from stargz.convert.workload import read_record_entries
from stargz.errors import ConfigError, RuntimeIntegrationError
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from stargz.estargz.toc import clean_name
from stargz.hellobench.daemons import Containerd, detach_mounts_under
from stargz.hellobench.debian import cached_path
from stargz.hellobench.images import Progress, cache_dir
from stargz.hellobench.model import VARIANTS, BenchImage, PushedVariant, Workload
from stargz.hellobench.oci import blob_path, layout_manifest
from stargz.hellobench.physical import LayerBlob, Limit, physical_limit

VERSION = 1  # bump when a conversion recipe changes: cached variants are converted again
TAG = "latest"
REPOSITORY = "bench/{image}"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
RECORD = "record.json"  # the access record, next to the estargz-optimized layout
PERIOD_S = 60  # an upper bound: python and gcc exit, the server stops at its ready line
CTR_REMOTE_PERIOD_S = 10  # ctr-remote (0.12) has no --wait-on-line: its default period
CONVERT_TIMEOUT_S = 1800


def push_variants(images: Mapping[str, BenchImage], variants: Sequence[str],
                  registry_host: str, *, peers: Path | None, work: Path,
                  cache: Path | None = None,
                  progress: Progress | None = None) -> list[PushedVariant]:
    """Push each image's `variants` (``VARIANTS`` order) to the plain-HTTP `registry_host` as
    ``bench/<image>:<variant>``, with each one's physical-limit figures.

    ctr-remote-optimized is made only with `peers` (the Go side is measured only then).
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    wanted = [v for v in VARIANTS if v in variants and (peers or v != "ctr-remote-optimized")]
    if len(wanted) < len(set(variants)):
        say("no ctr-remote-optimized variant without --peers")
    cache = cache or cache_dir()
    pushed = []
    for image in images.values():
        converter = Converter(image, cache, registry_host, work, say)
        for variant in wanted:
            layout = converter.layout(variant)
            repository, tag = REPOSITORY.format(image=image.name), variant
            push_layout(layout, f"{registry_host}/{repository}:{tag}")
            lazy = variant != "gzip"
            limit = variant_limit(layout, converter.accessed() if lazy else {}, lazy=lazy)
            say(f"pushed {image.name}:{variant}: needs {limit.needed_bytes / 1e6:.1f} of "
                f"{limit.total_bytes / 1e6:.1f} MB, {limit.round_trips} round trips")
            pushed.append(PushedVariant(image.name, variant, repository, tag,
                                        limit.needed_bytes, limit.total_bytes,
                                        limit.round_trips))
    return pushed


class Converter:
    """The cached variant layouts of one image (converting the ones not cached yet)."""

    def __init__(self, image: BenchImage, cache: Path, registry_host: str, work: Path,
                 progress: Progress) -> None:
        self.image, self.registry_host, self.work, self.progress = (
            image, registry_host, work, progress)
        digest, _manifest = layout_manifest(image.layout)
        self.directory = cache / "variants" / (
            f"{image.name}-{digest.partition(':')[2][:16]}-v{VERSION}")

    def layout(self, variant: str) -> Path:
        if variant == "gzip":
            return self.image.layout
        if not self.directory.exists():
            self._remove_stale()
            self.directory.mkdir(parents=True, exist_ok=True)
        if variant == "zstdchunked-optimized":
            self.record()  # first: the conversion reads it
        build = {
            "estargz": self._convert,
            "estargz-optimized": self._optimize,
            "ctr-remote-optimized": self._ctr_remote,
            "zstdchunked-optimized": self._optimize_zstd,
        }[variant]

        def timed(work: Path, out: Path) -> None:
            self.progress(f"converting {self.image.name} to {variant} (once: cached after)")
            started = time.monotonic()
            out.mkdir(parents=True)
            build(work, out)
            seconds = round(time.monotonic() - started, 1)
            (out / "convert.json").write_text(json.dumps({"seconds": seconds}) + "\n")
            self.progress(f"converted {self.image.name} to {variant} in {seconds:g} s")

        return cached_path(self.directory, variant, timed) / "layout"

    def _remove_stale(self) -> None:
        """Variants of an older build of the image (or an older recipe): never used again."""
        for old in self.directory.parent.glob(f"{self.image.name}-*-v*"):
            if old != self.directory:
                shutil.rmtree(old, ignore_errors=True)

    def record(self) -> Path:
        """The access record of the estargz-optimized run (made by converting it)."""
        return self.layout("estargz-optimized").parent / RECORD

    def accessed(self) -> dict[int, set[str]]:
        """The paths the workload read, by the index of the layer they were read from."""
        return accessed_by_layer(self.record())

    def _source(self) -> str:
        return f"oci:{self.image.layout}:{TAG}"

    def _convert(self, work: Path, out: Path) -> None:
        _stargz("convert", "--oci", self._source(), f"oci:{out / 'layout'}:{TAG}")

    def _optimize(self, work: Path, out: Path) -> None:
        output = _stargz("optimize", "--oci", *optimize_flags(self.image.workload),
                         "--record-out", str(out / RECORD), self._source(),
                         f"oci:{out / 'layout'}:{TAG}")
        self.progress(f"{self.image.name}: {check_workload_run(output)}")

    def _optimize_zstd(self, work: Path, out: Path) -> None:
        _stargz("optimize", "--oci", "--zstd-chunked", "--record-in", str(self.record()),
                self._source(), f"oci:{out / 'layout'}:{TAG}")

    def _ctr_remote(self, work: Path, out: Path) -> None:
        """ctr-remote optimizes an image containerd pulled: from the registry, then back."""
        host, repository = self.registry_host, REPOSITORY.format(image=self.image.name)
        plain, optimized = (f"{host}/{repository}:ctr-remote-source",
                            f"{host}/{repository}:ctr-remote-optimized")
        push_layout(self.image.layout, plain)
        # in the session's work dir: the cache's scratch path is too long for a socket's name
        root = self.work / f"ctr-remote-{self.image.name}"
        ctd = Containerd(root / "containerd", root / "no-snapshotter.sock")
        try:
            ctd.start()
            ctd.ctr("images", "pull", "--plain-http", plain, timeout=CONVERT_TIMEOUT_S)
            ctd.ctr("images", "optimize", "--oci", *ctr_remote_flags(self.image.workload),
                    plain, optimized, tool="ctr-remote", timeout=CONVERT_TIMEOUT_S)
            ctd.ctr("images", "push", "--plain-http", optimized, timeout=CONVERT_TIMEOUT_S)
        finally:
            ctd.stop()
            detach_mounts_under(root)
            shutil.rmtree(root, ignore_errors=True)
        _run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
              f"docker://{optimized}", f"oci:{out / 'layout'}:{TAG}"])


def optimize_flags(workload: Workload) -> list[str]:
    """`stargz optimize`'s flags for the workload: argv, env, cwd and when to stop it."""
    flags = ["--entrypoint", json.dumps(workload.argv[:1]), "--args",
             json.dumps(workload.argv[1:]), "--cwd", workload.cwd, "--period", str(PERIOD_S),
             "--wait-on-line", workload.ready_line]
    for pair in workload.env:
        flags += ["--env", pair]
    return flags


def ctr_remote_flags(workload: Workload) -> list[str]:
    flags = ["--entrypoint", json.dumps(workload.argv[:1]), "--args",
             json.dumps(workload.argv[1:]), "--cwd", workload.cwd, "--period",
             str(CTR_REMOTE_PERIOD_S)]
    for pair in workload.env:
        flags += ["--env", pair]
    return flags


def push_layout(layout: Path, destination: str) -> None:
    """``skopeo copy`` the layout's tag to a plain-HTTP registry, manifest bytes unchanged."""
    _run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
          f"oci:{layout}:{TAG}", f"docker://{destination}"])


def accessed_by_layer(record: Path) -> dict[int, set[str]]:
    accessed: dict[int, set[str]] = {}
    for entry in read_record_entries(record):
        if entry.layer_index is not None:
            accessed.setdefault(entry.layer_index, set()).add(clean_name(entry.path))
    return accessed


def variant_limit(layout: Path, accessed: Mapping[int, Collection[str]], *,
                  lazy: bool) -> Limit:
    """The physical limit of the image at `layout`: its layers opened from their TOCs (each
    verified against its annotation) when `lazy`, else needed whole."""
    digest, manifest = layout_manifest(layout, TAG)
    config = manifest["config"]
    layers = manifest["layers"]
    assert isinstance(config, dict) and isinstance(layers, list)
    with contextlib.ExitStack() as sources:
        opened = [_layer_blob(layout, descriptor, sources if lazy else None)
                  for descriptor in layers]
        return physical_limit(blob_path(layout, digest).stat().st_size, int(config["size"]),
                              opened, accessed)


def _layer_blob(layout: Path, descriptor: Mapping[str, object],
                sources: contextlib.ExitStack | None) -> LayerBlob:
    size = int(str(descriptor["size"]))
    if sources is None:
        return LayerBlob(size)
    annotations = descriptor.get("annotations") or {}
    assert isinstance(annotations, dict)
    toc_digest = annotations.get(TOC_DIGEST_ANNOTATION)
    if not toc_digest:
        raise RuntimeIntegrationError(f"layer {descriptor['digest']} of {layout} has no TOC "
                                      "digest annotation: not a lazy layer")
    source = FileSource(blob_path(layout, str(descriptor["digest"])))
    sources.callback(source.close)
    return LayerBlob(size, open_blob(source).verify(str(toc_digest)))


def check_workload_run(optimize_stderr: str) -> str:
    """`stargz optimize`'s line on how the workload ended; an error unless it exited with 0 or
    printed its ready line: a record of a failed or hung run would give wrong figures."""
    ends = [line for line in optimize_stderr.splitlines()
            if line.startswith("stargz: ") and "the workload" in line]
    if not ends:
        raise RuntimeIntegrationError("stargz optimize did not say how the workload ended")
    if "warning" in ends[-1] or "--period passed" in ends[-1]:
        raise RuntimeIntegrationError(f"the workload did not run as it should: {ends[-1]}")
    return ends[-1].removeprefix("stargz: ")


def _stargz(*args: str) -> str:
    beside = Path(sys.executable).with_name("stargz")  # this environment's own CLI
    return _run([str(beside) if beside.exists() else "stargz", *args])


def _run(argv: Sequence[str]) -> str:
    """Run `argv`; its stderr, or an error with its last line."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeIntegrationError(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                                      f"{output}")
    return done.stderr
