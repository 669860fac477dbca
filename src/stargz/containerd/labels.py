"""Label arithmetic of a lazy pull: chain ids, GC references, and the remote-snapshot labels that
ask the snapshotter to mount a layer instead of having it downloaded (RUNTIMES.md, handshake)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from stargz.snapshotter.remote import (
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
)

GC_CONTENT = "containerd.io/gc.ref.content"
GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
MAX_LABEL_SIZE = 4096  # containerd refuses a label whose key and value exceed this together


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain id of every layer prefix: id(0) = diff(0), id(n) = sha256(id(n-1) diff(n))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def manifest_gc_labels(config_digest: str, layer_digests: Sequence[str]) -> dict[str, str]:
    """A manifest keeps its config and layers alive (missing layers are simply not there)."""
    labels = {f"{GC_CONTENT}.config": config_digest}
    for index, digest in enumerate(layer_digests):
        labels[f"{GC_CONTENT}.l.{index}"] = digest
    return labels


def index_gc_label(position: int, manifest_digest: str) -> dict[str, str]:
    return {f"{GC_CONTENT}.m.{position}": manifest_digest}


def snapshot_gc_label(snapshotter: str, chain_id: str) -> dict[str, str]:
    """Set on the config after unpacking, as containerd does: keeps the image's snapshots alive."""
    return {f"{GC_SNAPSHOT}.{snapshotter}": chain_id}


def layers_label_value(digests: Sequence[str]) -> str:
    """As many of ``digests`` (in order) as fit in one label; dropping some only costs prefetch."""
    value = ""
    for digest in digests:
        candidate = f"{value},{digest}" if value else digest
        if len(LABEL_STARGZ_LAYERS) + len(candidate) > MAX_LABEL_SIZE:
            break
        value = candidate
    return value


def remote_labels(
    image_ref: str, chain_id: str, layer_digest: str, later_layers: Sequence[str],
    toc_digest: str | None,
) -> dict[str, str]:
    """Prepare labels for one layer: commit as ``chain_id``, mount from this source if you can.

    ``later_layers`` is this layer and the ones after it, as ctr-remote sends them."""
    labels = {
        LABEL_SNAPSHOT_REF: chain_id,
        LABEL_STARGZ_REFERENCE: image_ref,
        LABEL_STARGZ_DIGEST: layer_digest,
        LABEL_STARGZ_LAYERS: layers_label_value(later_layers),
    }
    if toc_digest:
        labels[LABEL_TOC_DIGEST] = toc_digest
    return labels
