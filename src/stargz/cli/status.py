"""`stargz status`: every snapshot of the snapshotter daemon, and whether its layer is lazy.

Read from the daemon's own state, no socket needed: its metadata (``<root>/metadata.sqlite``,
SQLite in WAL mode, safe to read beside the daemon), the layer state file each lazy layer serves
in the FUSE mount (``.stargz-snapshotter/<digest>.json``: bytes fetched of the blob, prefetch
done) and the fallbacks it recorded (``<root>/fallbacks.json``: why a layer was downloaded in
full). Root only, as the daemon's state is.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stargz.config import FileConfig, load_file_config
from stargz.errors import NotFoundError
from stargz.fs.tree import STATE_DIR
from stargz.printable import printable
from stargz.snapshotter.fallbacks import FALLBACKS_FILE, Fallback, load_fallbacks
from stargz.snapshotter.metastore import Kind, MetaStore, Record
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_REFERENCE,
)
from stargz.snapshotter.snapshotter import METADATA_FILE

if TYPE_CHECKING:
    from stargz.cli.blob import Subparsers

LAZY, FULL, WRITABLE = "lazy", "full", "-"
COLUMNS = ("SNAPSHOT", "KIND", "MODE", "LAYER", "FETCHED", "PREFETCH", "IMAGE", "REASON")


@dataclass(frozen=True)
class SnapshotStatus:
    snapshot: str
    kind: str
    mode: str  # lazy, full, or "-" for a container's writable layer or a view
    image: str = ""
    layer: str = ""
    fetched_bytes: int | None = None  # lazy layers: of the blob, from the registry so far
    size_bytes: int | None = None
    prefetch_done: bool | None = None
    reason: str = ""  # full layers asked for lazily: why they were downloaded
    detail: str = ""
    error: str = ""  # a lazy layer whose state can not be read (the daemon is down?)


def register(commands: Subparsers) -> None:
    cmd = commands.add_parser(
        "status", help="list the snapshotter's snapshots: lazy or full, bytes fetched, why",
        description="Every snapshot of the snapshotter daemon: its image and layer, lazy or "
        "downloaded in full, bytes fetched of the layer's blob, prefetch done, and for a layer "
        "that fell back to a full download, why.")
    cmd.add_argument("--config", type=Path, help="the daemon's config.toml (for its root)")
    cmd.add_argument("--root", type=Path, help="the daemon's state directory (default: the "
                     f"config's, else {FileConfig().snapshotter.root})")
    cmd.add_argument("--json", action="store_true", help="one JSON array, byte-exact names")
    cmd.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    root = args.root or Path(load_file_config(args.config).snapshotter.root)
    rows = snapshot_statuses(root)
    if args.json:
        json.dump([asdict(row) for row in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(rows))
    return 0


def snapshot_statuses(root: Path) -> list[SnapshotStatus]:
    metadata = root / METADATA_FILE
    if not metadata.is_file():
        raise NotFoundError(f"no snapshotter state in {root} (is --root the daemon's?)")
    store = MetaStore(metadata)
    try:
        with store.transaction() as tx:
            records = tx.walk()
    finally:
        store.close()
    fallbacks = load_fallbacks(root / FALLBACKS_FILE)
    # containerd commits under its own name ("k8s.io/6/sha256:..."); the Prepare's target
    # (snapshot.ref, the chain id) stays in the labels, and is what the fallback was recorded as
    return [_status(r, fallbacks.get(r.info.labels.get(LABEL_SNAPSHOT_REF, r.info.name)))
            for r in records]


def _status(record: Record, fallback: Fallback | None) -> SnapshotStatus:
    info = record.info
    labels = info.labels
    image = labels.get(LABEL_STARGZ_REFERENCE) or labels.get(LABEL_CRI_IMAGE_REF) or ""
    layer = labels.get(LABEL_STARGZ_DIGEST) or labels.get(LABEL_CRI_LAYER_DIGEST) or ""
    if record.remote_dir is not None:
        return _lazy_status(info.name, image, layer, Path(record.remote_dir))
    if info.kind is not Kind.COMMITTED:
        return SnapshotStatus(info.name, info.kind.value, WRITABLE)
    if fallback is not None:
        return SnapshotStatus(info.name, info.kind.value, FULL, fallback.image, fallback.layer,
                              reason=fallback.reason, detail=fallback.detail)
    return SnapshotStatus(info.name, info.kind.value, FULL, image, layer)


def _lazy_status(name: str, image: str, layer: str, directory: Path) -> SnapshotStatus:
    kind = Kind.COMMITTED.value
    try:
        state: dict[str, Any] = json.loads((directory / STATE_DIR / f"{layer}.json").read_text())
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) else "unreadable"
        return SnapshotStatus(name, kind, LAZY, image, layer, error=f"layer state: {why}")
    return SnapshotStatus(name, kind, LAZY, image, layer, fetched_bytes=int(state["fetchedSize"]),
                          size_bytes=int(state["size"]),
                          prefetch_done=state.get("prefetchComplete"),
                          error=str(state.get("error", "")))


def format_table(rows: list[SnapshotStatus]) -> str:
    cells = [COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]])
             .rstrip() for line in cells]
    return "\n".join(lines) + "\n"


def _cells(row: SnapshotStatus) -> tuple[str, ...]:
    fetched = "-"
    if row.fetched_bytes is not None and row.size_bytes:
        percent = 100.0 * row.fetched_bytes / row.size_bytes
        fetched = f"{row.fetched_bytes}/{row.size_bytes} ({percent:.1f}%)"
    prefetch = {None: "-", True: "done", False: "running"}[row.prefetch_done]
    reason = row.reason or row.error
    short_layer = row.layer.removeprefix("sha256:")[:12]
    return (printable(_short(row.snapshot)), row.kind, row.mode, short_layer, fetched, prefetch,
            printable(row.image or "-"), printable(reason or "-"))


def _short(name: str) -> str:
    """containerd's snapshot names are long (``sha256:<chain id>``, ``k8s.io/3/<digest>``)."""
    return name if len(name) <= 28 else name[:12] + "…" + name[-12:]
