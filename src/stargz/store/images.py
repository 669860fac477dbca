"""What the store knows of an image: its reference from a store directory name, and each layer's
description (``info``, the JSON containers/storage reads), from the manifest and config.

containers/storage names an image by ``base64(reference)`` (standard alphabet, padded), the
reference as podman pulled it (``registry/repo:tag`` or ``...@sha256:...``). ``info`` holds what
its ``Layer`` struct decodes, as the reference store computes it: the compressed digest and size
from the manifest, the diff digest from the config's ``rootfs.diff_ids`` at the same index, the
uncompressed size from the eStargz annotation (left out when absent) and the compression as
containers/storage's ``archive.Compression`` number.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from stargz.errors import InvalidArgumentError, NotFoundError, RegistryError, StargzError
from stargz.estargz.writer import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from stargz.registry.client import RegistryClient
from stargz.registry.manifest import Manifest
from stargz.registry.reference import Reference, validate_digest

log = logging.getLogger(__name__)

# containers/storage pkg/archive: Uncompressed 0, Bzip2 1, Gzip 2, Xz 3, Zstd 4
COMPRESSION_GZIP, COMPRESSION_ZSTD = 2, 4


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image, as the store describes it."""

    digest: str  # compressed-diff-digest
    size: int  # compressed-size
    diff_id: str  # diff-digest
    diff_size: int | None  # diff-size, when the layer's annotation says it
    compression: int
    toc_digest: str  # "" when the layer can not be served lazily (not eStargz)

    def info_json(self) -> bytes:
        """The ``info`` file: the reference's field names, empty ones left out (Go omitempty),
        one line as Go's json.Encoder writes it."""
        doc: dict[str, object] = {"compressed-diff-digest": self.digest,
                                  "compressed-size": self.size, "diff-digest": self.diff_id}
        if self.diff_size:
            doc["diff-size"] = self.diff_size
        if self.compression:
            doc["compression"] = self.compression
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerInfo:
        try:
            diff_size = data["diff_size"]
            return cls(str(data["digest"]), int(data["size"]), str(data["diff_id"]),
                       int(diff_size) if diff_size is not None else None,
                       int(data["compression"]), str(data["toc_digest"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgumentError(f"malformed layer record {str(data)[:200]!r}") from None


def image_dirname(ref: str) -> str:
    """The store directory containers/storage looks up for image ``ref``."""
    return base64.b64encode(ref.encode()).decode()


def ref_of_dirname(name: str) -> tuple[str, Reference]:
    """The image reference a store directory names (as given, and parsed); NotFoundError for a
    name that is none (any tool's probing, a typo)."""
    try:
        text = base64.b64decode(name, validate=True).decode()
        return text, Reference.parse(text)
    except (binascii.Error, UnicodeDecodeError, StargzError):
        raise NotFoundError(f"{name!r} names no image reference (base64 of one)") from None


def parse_layer_digest(name: str) -> str:
    try:
        return validate_digest(name)
    except StargzError:
        raise NotFoundError(f"{name!r} is not a layer digest") from None


def describe_image(manifest: Manifest, config: bytes) -> dict[str, LayerInfo]:
    """Every layer of ``manifest`` by digest; ``config`` is the image config's bytes."""
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise RegistryError(f"image config of {manifest.digest} has no rootfs.diff_ids") from None
    layers = manifest.layers()
    if len(layers) != len(diff_ids):
        raise RegistryError(f"manifest {manifest.digest} has {len(layers)} layers but its "
                            f"config {len(diff_ids)} diff_ids")
    described: dict[str, LayerInfo] = {}
    for descriptor, diff_id in zip(layers, diff_ids, strict=True):
        annotations = descriptor.annotations
        size_text = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION, "")
        described[descriptor.digest] = LayerInfo(
            digest=descriptor.digest, size=descriptor.size, diff_id=str(diff_id),
            diff_size=int(size_text) if size_text.isdigit() else None,
            compression=COMPRESSION_ZSTD if descriptor.media_type.endswith("zstd")
            else COMPRESSION_GZIP,
            toc_digest=annotations.get(TOC_DIGEST_ANNOTATION, ""))
    return described


@dataclass
class _Described:
    layers: dict[str, LayerInfo]
    at: float  # time.monotonic() of the fetch


class ImagePool:
    """Image descriptions by reference, fetched (manifest + config) once for every lookup that
    asks meanwhile, and kept ``ttl`` seconds: an image's layers are looked up together."""

    def __init__(self, registry: RegistryClient, ttl: float) -> None:
        self.registry = registry
        self.ttl = ttl
        self._described: dict[str, _Described] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def describe(self, ref_name: str, ref: Reference, digest: str) -> LayerInfo:
        """Layer ``digest`` of image ``ref``. A digest the cached manifest lacks fetches the
        manifest again once (the tag may have moved); NotFoundError if it is not there."""
        layers = await self.layers(ref_name, ref)
        if digest not in layers:
            layers = await self.layers(ref_name, ref, refresh=True)
        found = layers.get(digest)
        if found is None:
            raise NotFoundError(f"layer {digest} is not in image {ref_name}")
        return found

    async def layers(self, ref_name: str, ref: Reference,
                     refresh: bool = False) -> dict[str, LayerInfo]:
        lock = self._locks.setdefault(ref_name, anyio.Lock())
        async with lock:
            cached = self._described.get(ref_name)
            now = time.monotonic()
            if cached is not None and not refresh and now - cached.at < self.ttl:
                return cached.layers
            if cached is not None and refresh and now - cached.at < 1.0:
                return cached.layers  # just fetched: asking again would give the same
            layers = await self._fetch(ref)
            self._described[ref_name] = _Described(layers, time.monotonic())
            self._forget_expired(now)
            return layers

    async def _fetch(self, ref: Reference) -> dict[str, LayerInfo]:
        manifest = await self.registry.get_manifest(ref)
        config = await self.registry.get_blob(ref.repo_only(), manifest.config().digest)
        layers = describe_image(manifest, config)
        log.debug("image %s: manifest %s, %d layers", ref, manifest.digest, len(layers))
        return layers

    def _forget_expired(self, now: float) -> None:
        for name in [n for n, d in self._described.items() if now - d.at >= self.ttl]:
            del self._described[name]
            lock = self._locks.get(name)
            if lock is not None and not lock.locked():
                del self._locks[name]
