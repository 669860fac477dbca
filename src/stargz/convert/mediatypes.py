"""Media types and annotation keys that conversion reads and writes."""

from __future__ import annotations

from stargz.estargz.writer import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_MANIFEST_CHECKSUM_ANNOTATION,
    ZSTD_MANIFEST_POSITION_ANNOTATION,
)
from stargz.registry.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MANIFESTS,
    INDEXES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

# Layer types the registry client has no need to name.
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LIST = DOCKER_MANIFEST_LIST

INDEX_TYPES = INDEXES
MANIFEST_TYPES = IMAGE_MANIFESTS
# Layers we can convert; foreign (non-distributable) layers are left as they are.
CONVERTIBLE_LAYERS = frozenset(
    {OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER}
)

# What each converted layer's annotations must hold for it to count as already converted.
ESTARGZ_ANNOTATIONS = frozenset({TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION})
ZSTD_CHUNKED_ANNOTATIONS = frozenset(
    {ZSTD_MANIFEST_CHECKSUM_ANNOTATION, ZSTD_MANIFEST_POSITION_ANNOTATION}
)


def converted_layer_type(source_type: str, *, oci: bool, zstd_chunked: bool) -> str:
    """The media type a converted layer gets: zstd needs OCI; Docker types stay unless --oci."""
    if zstd_chunked:
        return OCI_LAYER_ZSTD
    if source_type.startswith("application/vnd.docker.") and not oci:
        return DOCKER_LAYER_GZIP
    return OCI_LAYER_GZIP


def uncompressed_layer_type(source_type: str, *, oci: bool) -> str:
    """``--uncompress``: a plain tar layer, Docker's type kept unless --oci."""
    if source_type.startswith("application/vnd.docker.") and not oci:
        return DOCKER_LAYER
    return OCI_LAYER


def converted_manifest_type(source_type: str, *, oci: bool, zstd_chunked: bool) -> str:
    if source_type == DOCKER_MANIFEST and not (oci or zstd_chunked):
        return DOCKER_MANIFEST
    return OCI_MANIFEST


def converted_config_type(source_type: str, *, oci: bool, zstd_chunked: bool) -> str:
    if source_type == DOCKER_CONFIG and not (oci or zstd_chunked):
        return DOCKER_CONFIG
    return OCI_CONFIG


def converted_index_type(source_type: str, *, oci: bool, zstd_chunked: bool) -> str:
    if source_type == DOCKER_LIST and not (oci or zstd_chunked):
        return DOCKER_LIST
    return OCI_INDEX


__all__ = [
    "CONVERTIBLE_LAYERS", "DOCKER_CONFIG", "DOCKER_LAYER", "DOCKER_LAYER_GZIP", "DOCKER_LIST",
    "DOCKER_MANIFEST", "ESTARGZ_ANNOTATIONS", "INDEX_TYPES", "MANIFEST_TYPES", "OCI_CONFIG",
    "OCI_INDEX", "OCI_LAYER", "OCI_LAYER_GZIP", "OCI_LAYER_ZSTD", "OCI_MANIFEST",
    "ZSTD_CHUNKED_ANNOTATIONS", "converted_config_type", "converted_index_type",
    "converted_layer_type", "converted_manifest_type", "uncompressed_layer_type",
]
