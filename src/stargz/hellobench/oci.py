"""OCI image layouts (plain gzip layers) made with umoci from root filesystems on disk.

Each :meth:`LayeredImage.commit` packs what changed in the bundle's rootfs since the last commit
as one more layer, so an image is built the way a Dockerfile builds it: a base, then steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from stargz.errors import RuntimeIntegrationError


def _umoci(*args: str) -> None:
    done = subprocess.run(["umoci", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeIntegrationError(f"umoci {args[0]} failed ({done.returncode}): {last}")


class LayeredImage:
    """An image being built at ``layout:tag``: edit ``rootfs``, then ``commit()`` a layer.

        with LayeredImage(layout) as image:
            extract_tar(base, image.rootfs); image.commit()
            apt_install(image.rootfs, ["gcc"], update=True); image.commit()
            image.configure(cmd=["/bin/sh"])
    """

    def __init__(self, layout: Path, tag: str = "latest") -> None:
        self.image = f"{layout}:{tag}"
        self.layout = layout
        self._scratch = tempfile.TemporaryDirectory(prefix="umoci-bundle-")
        self.bundle = Path(self._scratch.name) / "bundle"
        self.rootfs = self.bundle / "rootfs"
        if not (layout / "index.json").exists():
            _umoci("init", "--layout", str(layout))
        _umoci("new", "--image", self.image)
        _umoci("unpack", "--image", self.image, str(self.bundle))
        self._committed: dict[str, int] | None = None  # path -> ctime at the last commit

    def __enter__(self) -> LayeredImage:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._scratch.cleanup()

    def commit(self) -> None:
        """One layer of what changed in ``rootfs`` since the last commit, with the parent
        directories of every change, as Docker's builder writes them (umoci leaves out the
        unchanged ones, and ctr-remote 0.12 can not order a layer whose files' parents are
        missing: "failed to sort tar entries: file: "usr": not found")."""
        if self._committed is not None:
            touch_parents_of_changes(self.rootfs, self._committed)
        # --refresh-bundle: the next commit diffs against this one, not against the empty base
        _umoci("repack", "--refresh-bundle", "--image", self.image, str(self.bundle))
        self._committed = tree_state(self.rootfs)

    def configure(self, cmd: Sequence[str], env: Sequence[str] = (), workdir: str = "/") -> None:
        args = ["config", "--image", self.image, "--config.workingdir", workdir]
        for word in cmd:  # umoci appends each repeated --config.cmd to the command line
            args += ["--config.cmd", word]
        for pair in env:
            args += ["--config.env", pair]
        _umoci(*args)


def tree_state(root: Path) -> dict[str, int]:
    """Every path under `root` with its ctime (which any change of contents or metadata sets)."""
    state = {}
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            state[os.path.relpath(path, root)] = os.lstat(path).st_ctime_ns
    return state


def touch_parents_of_changes(root: Path, before: dict[str, int]) -> None:
    """Give every ancestor directory of a changed, new or removed path a new mtime, so the
    next diff carries it."""
    after = tree_state(root)
    changed = {path for path, ctime in after.items() if before.get(path) != ctime}
    changed |= before.keys() - after.keys()
    parents = {str(parent) for path in changed for parent in Path(path).parents
               if str(parent) != "."}
    now = time.time_ns()
    for parent in sorted(parents):
        if (root / parent).is_dir() and not (root / parent).is_symlink():
            os.utime(root / parent, ns=(now, now), follow_symlinks=False)


def make_oci_image(
    rootfs: Path, layout: Path, tag: str = "latest", cmd: Sequence[str] = ("/bin/sh",)
) -> str:
    """An OCI image layout at `layout` holding `rootfs` as one layer; returns ``oci:LAYOUT:TAG``.

    Push it with ``skopeo copy --dest-tls-verify=false oci:LAYOUT:TAG docker://HOST/REPO:TAG``.
    """
    with LayeredImage(layout, tag) as image:
        subprocess.run(["cp", "-a", f"{rootfs}/.", str(image.rootfs)], check=True)
        image.commit()
        image.configure(cmd)
    return f"oci:{image.image}"


def layout_manifest(layout: Path, tag: str = "latest") -> tuple[str, dict[str, object]]:
    """(digest, parsed manifest) of `tag` in the OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index.get("manifests", []):
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = str(entry["digest"])
            return digest, json.loads(blob_path(layout, digest).read_text())
    raise RuntimeIntegrationError(f"no tag {tag!r} in the OCI layout {layout}")


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return layout / "blobs" / algorithm / hexpart
