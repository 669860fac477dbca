"""Layers whose TOC is kept outside them, in the image's "TOC image" (the reference's
``--estargz-external-toc``).

Such a layer ends with the 46-byte external-TOC footer. Its TOC (``stargz.index.json`` in a
gzip'd tar, exactly as a TOC member) is a layer of the image ``<tag>-esgztoc`` in the same
repository, annotated ``containerd.io/snapshot/stargz/layer.digest: <layer digest>``. The TOC
digest of the layer's own descriptor is what proves the TOC belongs to the layer, as ever.
"""

from __future__ import annotations

import asyncio

from stargz.errors import InvalidArgumentError, NotFoundError, TOCError
from stargz.registry.client import RegistryClient
from stargz.registry.reference import Reference

TOC_IMAGE_SUFFIX = "-esgztoc"  # the reference's: the TOC image is tagged <tag>-esgztoc
LAYER_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/layer.digest"


def toc_image_reference(image: Reference) -> Reference:
    """Where the TOC image of ``image`` is: its tag with ``-esgztoc`` added."""
    if not image.tag:
        raise InvalidArgumentError(
            f"{image}: the TOC image of an external-TOC layer is found through the image's tag "
            f"(<tag>{TOC_IMAGE_SUFFIX}); name the image by its tag")
    return image.with_tag(image.tag + TOC_IMAGE_SUFFIX)


class TOCImage:
    """The TOC image of one image: its manifest read once, each layer's TOC blob on request."""

    def __init__(self, registry: RegistryClient, image: Reference, max_bytes: int) -> None:
        self._registry = registry
        self.reference = toc_image_reference(image)
        self._max_bytes = max_bytes
        self._lock = asyncio.Lock()
        self._tocs: dict[str, tuple[str, int]] | None = None  # layer digest -> (blob, size)

    async def toc_of(self, layer_digest: str) -> bytes:
        """The TOC blob (gzip'd tar) of ``layer_digest``; its digest is checked on the way."""
        tocs = await self._layers()
        found = tocs.get(layer_digest)
        if found is None:
            raise NotFoundError(f"the TOC image {self.reference} has no TOC for layer "
                                f"{layer_digest}")
        blob_digest, size = found
        if size > self._max_bytes:
            raise TOCError(f"the TOC of layer {layer_digest} is {size} bytes, more than the "
                           f"limit of {self._max_bytes} (limits.max_toc_bytes)")
        return await self._registry.get_blob(self.reference.repo_only(), blob_digest)

    async def _layers(self) -> dict[str, tuple[str, int]]:
        async with self._lock:
            if self._tocs is None:
                manifest = await self._registry.get_manifest(self.reference)
                self._tocs = {
                    layer.annotations[LAYER_DIGEST_ANNOTATION]: (layer.digest, layer.size)
                    for layer in manifest.layers()
                    if LAYER_DIGEST_ANNOTATION in layer.annotations}
            return self._tocs
