"""Region math: which compressed byte ranges a read needs, and how to ask for them.

A read needs whole members (gzip) or frames (zstd), so needs are first aligned to those
boundaries by the caller (a chunk's [compressed_offset, compressed_end)). Needs that are close
together are then merged: fetching a small gap costs less than another range in the request.
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]  # [start, end), end exclusive


def merge_ranges(needs: Iterable[Range], granularity: int) -> list[Range]:
    """Sorted, non-overlapping ranges covering ``needs``; gaps shorter than ``granularity``
    are fetched too so neighbouring needs become one range."""
    merged: list[list[int]] = []
    for start, end in sorted(needs):
        if end <= start:
            continue
        if merged and start - merged[-1][1] < granularity:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def slice_from(fetched: list[Range], data: list[bytes], need: Range) -> bytes:
    """The bytes of ``need`` out of the fetched ranges (one of which must contain it)."""
    start, end = need
    for (f_start, f_end), blob in zip(fetched, data, strict=True):
        if f_start <= start and end <= f_end:
            return blob[start - f_start : end - f_start]
    raise ValueError(f"range {need} was not fetched")


def batches(needs: list[Range], max_bytes: int) -> list[list[Range]]:
    """Split sorted needs into groups of at most ``max_bytes`` (a need larger than that is
    a group of its own), so one request never asks for an unbounded amount."""
    groups: list[list[Range]] = []
    size = 0
    for need in needs:
        length = need[1] - need[0]
        if not groups or size + length > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(need)
        size += length
    return groups


class SpanSet:
    """A union of byte ranges, to report how much of a blob is held locally."""

    def __init__(self) -> None:
        self._spans: list[Range] = []
        self._total = 0

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        kept: list[Range] = []
        for s, e in self._spans:
            if e < start or s > end:
                kept.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        kept.append((start, end))
        kept.sort()
        self._spans = kept
        self._total = sum(e - s for s, e in kept)

    @property
    def total(self) -> int:
        return self._total

    def covers(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self._spans)
