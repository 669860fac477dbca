"""Which layer of an image provides a path: the top-most one that has it, unless a layer above
deleted it (a ``.wh.NAME`` whiteout or an opaque directory on the way), as overlayfs sees it.

An access record becomes, per layer, the list of files to put first, in first-access order:

    files = ImageFiles.from_entries([(e.name, e.type) for e in blob.walk()] for blob in blobs)
    per_layer = files.assign(paths)          # {layer index: [path, ...]}
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from wcmatch import glob

from stargz.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_NOT_CONTENT = {PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_TAR_NAME}
GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB  # `**` spans directories; `*` matches dot files too
GLOB_CHARS = frozenset("*?[")


def clean(path: str) -> str:
    """Root-relative, normalized, as TOC names are ("" for the root)."""
    return posixpath.normpath("/" + path).lstrip("/")


@dataclass(frozen=True)
class ImageFiles:
    """Each layer's entry names and types (bottom layer first)."""

    layers: tuple[dict[str, str], ...]

    @classmethod
    def from_entries(cls, layers: Iterable[Iterable[tuple[str, str]]]) -> ImageFiles:
        return cls(tuple({name: kind for name, kind in entries if kind != "chunk"}
                         for entries in layers))

    def layer_of(self, path: str) -> int | None:
        """The index of the layer whose ``path`` the merged root shows, or None when no layer
        has it or a layer above the one that has it deleted it."""
        name = clean(path)
        if not name or name in _NOT_CONTENT or _is_whiteout(name):
            return None
        for index in range(len(self.layers) - 1, -1, -1):
            names = self.layers[index]
            if name in names:
                return index
            if _deletes(names, name):
                return None
        return None

    def assign(self, paths: Iterable[str]) -> dict[int, list[str]]:
        """Each path under the layer that provides it, in the order given, each once; paths
        no layer provides (written by the workload, deleted, outside the image) are left out."""
        per_layer: dict[int, list[str]] = {}
        seen: set[str] = set()
        for path in paths:
            name = clean(path)
            if name in seen:
                continue
            seen.add(name)
            index = self.layer_of(name)
            if index is not None:
                per_layer.setdefault(index, []).append(name)
        return per_layer

    def visible_files(self) -> Iterator[str]:
        """Every non-directory path the merged root shows, bottom layer's first, in tar order."""
        seen: set[str] = set()
        for names in self.layers:
            for name, kind in names.items():
                if kind != "dir" and name not in seen and self.layer_of(name) is not None:
                    seen.add(name)
                    yield name

    def expand(self, patterns: Sequence[str]) -> list[str]:
        """Paths for a prioritize list: a plain path as it is, a glob (``*``, ``?``, ``[...]``,
        ``**``) as the files it matches, in image order."""
        out: list[str] = []
        everything: list[str] | None = None
        for pattern in patterns:
            if not GLOB_CHARS & set(pattern):
                out.append(clean(pattern))
                continue
            if everything is None:
                everything = list(self.visible_files())
            wanted = clean(pattern)
            out += [name for name in everything if glob.globmatch(name, wanted, flags=GLOB_FLAGS)]
        return out


def _is_whiteout(name: str) -> bool:
    return posixpath.basename(name).startswith(WHITEOUT_PREFIX)


def _deletes(names: dict[str, str], name: str) -> bool:
    """Whether a layer that lacks ``name`` hides the layers below it from ``name``: a whiteout
    of it or of a parent, or an opaque parent directory."""
    path = name
    while path:
        parent, base = posixpath.split(path)
        if posixpath.join(parent, WHITEOUT_PREFIX + base) in names:
            return True
        if path != name and posixpath.join(path, OPAQUE_MARKER) in names:
            return True
        path = parent
    return OPAQUE_MARKER in names  # an opaque root
