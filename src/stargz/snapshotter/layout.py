"""On-disk layout of containerd's overlayfs snapshotter, and the mounts it hands out.

``<root>/metadata.sqlite`` holds the metadata; ``<root>/snapshots/<id>/fs`` a snapshot's files
(the upperdir of an active snapshot) and ``<root>/snapshots/<id>/work`` the overlayfs workdir
(active snapshots only).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stargz.snapshotter.metastore import Kind, Snapshot, Usage

log = logging.getLogger(__name__)

_BLOCK_UNIT = 512  # st_blocks counts 512-byte units, as continuity's DiskUsage does


@dataclass(frozen=True)
class Mount:
    """containerd.types.Mount: what containerd passes to mount(2)."""

    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / "snapshots"
        # like containerd: index=off whenever the kernel's overlay knows the option
        self.index_off = Path("/sys/module/overlay/parameters/index").exists()

    def create_dirs(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots.mkdir(mode=0o700, exist_ok=True)

    def upper(self, snapshot_id: str) -> Path:
        return self.snapshots / snapshot_id / "fs"

    def work(self, snapshot_id: str) -> Path:
        return self.snapshots / snapshot_id / "work"

    def prepare_directory(self, kind: Kind) -> Path:
        """A new snapshot's directory under a temporary name, renamed once its id is known."""
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots))
        try:
            (tmp / "fs").mkdir(0o755)
            if kind is Kind.ACTIVE:
                (tmp / "work").mkdir(0o711)
        except OSError:
            remove_tree(tmp)
            raise
        return tmp

    def lower_dir(self, layer_id: str, remote_dir: str | None) -> str:
        return remote_dir if remote_dir is not None else str(self.upper(layer_id))

    def mounts(self, snapshot: Snapshot) -> list[Mount]:
        """What containerd's overlayfs snapshotter answers for this snapshot."""
        if not snapshot.parents:
            # a lone layer: overlay needs a lowerdir, so bind mount the directory itself
            flag = "ro" if snapshot.kind is Kind.VIEW else "rw"
            return [Mount("bind", str(self.upper(snapshot.id)), (flag, "rbind"))]
        lowers = [self.lower_dir(p.id, p.remote_dir) for p in snapshot.parents]
        options = ["index=off"] if self.index_off else []
        if snapshot.kind is Kind.ACTIVE:
            options += [f"workdir={self.work(snapshot.id)}", f"upperdir={self.upper(snapshot.id)}"]
        elif len(lowers) == 1:
            return [Mount("bind", lowers[0], ("ro", "rbind"))]
        options.append("lowerdir=" + ":".join(lowers))
        return [Mount("overlay", "overlay", tuple(options))]

    def stale_dirs(self, live_ids: set[str]) -> list[Path]:
        """Directories under snapshots/ that no snapshot owns (removed, or half-created)."""
        return [p for p in sorted(self.snapshots.iterdir()) if p.name not in live_ids]


def disk_usage(path: Path) -> Usage:
    """continuity's fs.DiskUsage: distinct inodes under path (itself included) and their blocks."""
    seen: set[tuple[int, int]] = set()
    size = 0
    pending = [str(path)]
    while pending:
        current = pending.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if current == str(path):
                raise
            continue  # removed while we walked (a running container's upperdir)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * _BLOCK_UNIT
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(current) as entries:
                    pending.extend(entry.path for entry in entries)
            except FileNotFoundError:
                continue
    return Usage(size=size, inodes=len(seen))


def mountpoints_under(path: Path) -> list[str]:
    """Mount points at or below path, from /proc/self/mountinfo (octal escapes decoded)."""
    prefix = str(path)
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            point = _unescape_mountinfo(line.split(" ")[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _unescape_mountinfo(field_text: str) -> str:
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field_text = field_text.replace(code, chr(int(code[1:], 8)))
    return field_text


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into a mounted filesystem (that would delete its files)."""
    mounted = mountpoints_under(path)
    if mounted:
        log.error("not removing %s: %s still mounted", path, ", ".join(mounted))
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("failed to remove directory %s: %s", path, err)
