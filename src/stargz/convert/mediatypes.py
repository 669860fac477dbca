"""Media types and annotation keys that conversion reads and writes."""

from __future__ import annotations

from stargz.estargz.writer import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_MANIFEST_CHECKSUM_ANNOTATION,
    ZSTD_MANIFEST_POSITION_ANNOTATION,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
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
