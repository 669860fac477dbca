"""The TOC image of ``--estargz-external-toc``, written the way the reference writes it.

One OCI manifest for every converted layer of every platform: an empty config (``{}``), and a
``tar+gzip`` layer per eStargz layer holding its TOC, annotated with that layer's digest and
sorted by TOC blob digest. It is tagged ``<tag>-esgztoc`` next to the image, where readers (ours
in ``stargz.layer.externaltoc``, the reference's snapshotter) look for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from stargz.convert import mediatypes as mt
from stargz.convert.store import ImageStore
from stargz.layer.externaltoc import LAYER_DIGEST_ANNOTATION, TOC_IMAGE_SUFFIX
from stargz.registry.manifest import Descriptor, Manifest


@dataclass(frozen=True)
class ExternalTOC:
    layer_digest: str  # the eStargz layer the TOC belongs to
    digest: str  # the TOC blob (gzip'd tar of stargz.index.json)
    size: int


def toc_blob_descriptor(toc_digest: str, size: int) -> Descriptor:
    return Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=toc_digest, size=size)


async def put_toc_image(dest: ImageStore, tag: str, tocs: list[ExternalTOC]) -> Manifest:
    """Write the TOC image of ``tocs`` (whose blobs are in ``dest`` already) as
    ``<tag>-esgztoc``."""
    config = b"{}"
    config_desc = Descriptor(media_type=mt.OCI_CONFIG, digest=_sha256(config), size=len(config))
    await dest.push_blob(config_desc, config, lambda _: None)
    layers = [
        {"mediaType": mt.OCI_LAYER_GZIP, "digest": toc.digest, "size": toc.size,
         "annotations": {LAYER_DIGEST_ANNOTATION: toc.layer_digest}}
        for toc in sorted(set(tocs), key=lambda toc: toc.digest)]
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config_desc.to_dict(),
           "layers": layers}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    manifest = Manifest(raw=raw, media_type=mt.OCI_MANIFEST, digest=_sha256(raw))
    await dest.put_manifest(tag + TOC_IMAGE_SUFFIX, manifest)
    return manifest


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
