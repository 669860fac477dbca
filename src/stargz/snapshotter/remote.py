"""The hook through which lazily pulled layers join the snapshotter, and the labels that ask for it.

A client that pulls lazily (ctr-remote rpull, containerd's CRI plugin, nerdctl) calls Prepare with
``containerd.io/snapshot.ref`` (the chain id to commit as) plus labels naming the layer's source.
The snapshotter then asks :class:`RemoteLayers` for a directory holding the layer's files; if it
gets one, the layer is committed without being downloaded (see RUNTIMES.md, the handshake).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_REMOTE = "containerd.io/snapshot/remote"
REMOTE_LABEL_VALUE = "remote snapshot"  # the value the reference snapshotter writes

LABEL_STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
LABEL_STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
LABEL_STARGZ_LAYERS = "containerd.io/snapshot/remote/stargz.layers"
LABEL_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
LABEL_STARGZ_PREFETCH = "containerd.io/snapshot/remote/stargz.prefetch"
LABEL_STARGZ_SKIP_VERIFY = "containerd.io/snapshot/remote/stargz.skipverify"
LABEL_URLS = "containerd.io/snapshot/remote/urls"
LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"


def wants_remote(labels: Mapping[str, str]) -> bool:
    """Whether a Prepare asks for a remote snapshot: a target to commit as and a layer source.

    The hook gets every label and decides whether it can serve the layer (a missing TOC digest,
    say, is its reason to decline), so only the minimum to locate a layer is required here."""
    if not labels.get(LABEL_SNAPSHOT_REF):
        return False
    stargz = bool(labels.get(LABEL_STARGZ_REFERENCE) and labels.get(LABEL_STARGZ_DIGEST))
    cri = bool(labels.get(LABEL_CRI_IMAGE_REF) and labels.get(LABEL_CRI_LAYER_DIGEST))
    return stargz or cri


class RemoteLayers(Protocol):
    """Mounts layers lazily and hands back directories overlayfs can use as lowerdirs.

    Every directory handed out by :meth:`prepare_remote` or :meth:`restore` is given back exactly
    once through :meth:`release` (when the snapshot is removed, or when the snapshotter could not
    record it), so an implementation that shares one mount between snapshots can count uses."""

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        """Mount the layer the labels describe; return its directory, or None to fall back.

        ``key`` is the active snapshot's key, ``parent_chain`` the parent snapshots' names,
        nearest first. Raising (any StargzError) also means fall back: the snapshotter logs why
        and the client downloads the layer as usual."""
        ...

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        """After a restart, mount again a committed remote snapshot; return its directory.

        Returning None (or raising) marks the snapshot unavailable: mounts that need it fail
        with a clear error instead of showing an empty layer."""
        ...

    async def release(self, name: str, directory: str) -> None:
        """The snapshot using ``directory`` is gone; unmount it if nothing else uses it."""
        ...

    async def check(self, name: str, directory: str) -> None:
        """The layer under ``directory`` (snapshot ``name``) is about to be used by a container:
        return once its prefetch is done, or ``prefetch_timeout_sec`` passed (the reference's
        fs.Check). Raising only logs a warning: the container starts anyway."""
        ...


class NoRemoteLayers:
    """The hook when no lazy filesystem is configured: every layer is downloaded as usual."""

    async def prepare_remote(
        self, key: str, parent_chain: Sequence[str], labels: Mapping[str, str]
    ) -> str | None:
        log.info("remote snapshot for %s not available: no lazy layer store configured", key)
        return None

    async def restore(self, name: str, labels: Mapping[str, str], previous_dir: str) -> str | None:
        log.warning("can not restore remote snapshot %s: no lazy layer store configured", name)
        return None

    async def release(self, name: str, directory: str) -> None:
        return None

    async def check(self, name: str, directory: str) -> None:
        return None
