"""The physical limit of a cold start: the compressed bytes a workload can not do without, and
the requests that can not overlap. Pure functions of the layers' TOCs and the paths the
workload reads (its access record); no network, no disk beyond what the blobs are read from.

For a lazily pullable layer (eStargz, zstd:chunked) the runtime needs its footer and TOC, and
the compressed spans (gzip members, zstd frames) holding the chunks of the files the workload
opens; a span shared by several files counts once. Any other layer is fetched whole, so a plain
gzip image needs every byte: ``needed == total``. The manifest and config are always needed.

Round trips are the requests that must wait for each other's answers, the rest running in
parallel: connect, manifest (by tag), then the config and every layer's footer+TOC (or whole
blob) at once, since the manifest names them all (a suffix range returns footer and TOC in one
answer), then, when the workload reads file data from a lazy layer, its chunks at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from stargz.estargz.reader import VerifiedBlob

CONNECT, MANIFEST, METADATA, DATA = 1, 1, 1, 1


@dataclass(frozen=True)
class LayerBlob:
    """One layer as the limit sees it: its compressed size and, when it can be pulled lazily,
    its opened blob (``None``: fetched whole)."""

    size: int
    blob: VerifiedBlob | None = None


@dataclass(frozen=True)
class Limit:
    needed_bytes: int
    total_bytes: int
    round_trips: int


def footer_and_toc_bytes(layer: LayerBlob) -> int:
    """The compressed bytes of the layer's TOC and footer (what resolving a lazy layer reads)."""
    assert layer.blob is not None
    footer = layer.blob.footer
    start, end = footer.toc_range(layer.size)
    return end - start + footer.footer_size


def accessed_spans(blob: VerifiedBlob, paths: Iterable[str]) -> list[tuple[int, int]]:
    """The merged [start, end) compressed spans holding the chunks of `paths` in `blob`
    (paths that are not regular files of this blob, or are empty, hold none)."""
    spans = []
    for path in paths:
        entry = blob.lookup(path)
        if entry is None or entry.type != "reg" or entry.size == 0:
            continue
        spans += [(chunk.compressed_offset, chunk.compressed_end) for chunk in blob.chunks(path)]
    return _merged(spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:  # overlapping or one member shared by two files
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def physical_limit(manifest_bytes: int, config_bytes: int, layers: Sequence[LayerBlob],
                   accessed: Mapping[int, Collection[str]]) -> Limit:
    """The limit of one image variant. ``accessed`` maps a layer's index (in the manifest) to
    the paths the workload reads from that layer (the access record's layerIndex and path)."""
    total = manifest_bytes + config_bytes + sum(layer.size for layer in layers)
    needed = manifest_bytes + config_bytes
    reads_data = False
    for index, layer in enumerate(layers):
        if layer.blob is None:
            needed += layer.size
            continue
        spans = accessed_spans(layer.blob, accessed.get(index, ()))
        reads_data = reads_data or bool(spans)
        needed += footer_and_toc_bytes(layer) + sum(end - start for start, end in spans)
    trips = CONNECT + MANIFEST + METADATA + (DATA if reads_data else 0)
    return Limit(needed, total, trips)
