"""Manifests, indexes, descriptors and platform selection (OCI and Docker schema 2)."""

from __future__ import annotations

import hashlib
import json
import platform as host_platform
from dataclasses import dataclass, field
from typing import Any

from stargz.errors import InvalidArgumentError, NotFoundError, RegistryError, VerificationError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST])
MAX_MANIFEST_SIZE = 4 << 20  # containerd's limit too
_MACHINE_TO_ARCH = {"x86_64": ("amd64", None), "amd64": ("amd64", None),
                    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
                    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
                    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
                    "riscv64": ("riscv64", None)}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_hasher(digest: str) -> Any:
    """A hashlib object for the digest's algorithm (sha256 or sha512)."""
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise InvalidArgumentError(f"unsupported digest algorithm in {digest!r}")
    return hashlib.new(algorithm)


def digest_of(data: bytes, like: str = "sha256:") -> str:
    hasher = new_hasher(like)
    hasher.update(data)
    return f"{hasher.name}:{hasher.hexdigest()}"


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def host(cls) -> Platform:
        arch, variant = _MACHINE_TO_ARCH.get(host_platform.machine().lower(), ("amd64", None))
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8`` style, as ctr and docker accept it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgumentError(f"invalid platform {text!r}: want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, other: Platform) -> bool:
        """Does ``other`` (an index entry) satisfy this wanted platform?"""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        # arm64 images usually leave out the default variant v8.
        default = "v8" if self.architecture == "arm64" else None
        return (other.variant or default) == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> Descriptor:
        try:
            plat = data.get("platform")
            return cls(
                media_type=str(data.get("mediaType", "")),
                digest=str(data["digest"]),
                size=int(data["size"]),
                annotations=dict(data.get("annotations") or {}),
                platform=Platform(plat["os"], plat["architecture"], plat.get("variant"))
                if plat else None,
                urls=tuple(data.get("urls") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RegistryError(f"malformed descriptor {str(data)[:200]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        if self.urls:
            data["urls"] = list(self.urls)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        if self.platform is not None:
            plat = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            data["platform"] = plat
        return data


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as served: the raw bytes, their media type and their digest."""

    raw: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RegistryError(f"manifest {self.digest} is not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return data

    def descriptors(self) -> list[Descriptor]:
        """The index's manifests, or the image manifest's config followed by its layers."""
        data = self.json()
        if self.is_index:
            return [Descriptor.from_dict(d) for d in data.get("manifests") or []]
        return [Descriptor.from_dict(data.get("config")),
                *(Descriptor.from_dict(d) for d in data.get("layers") or [])]

    def config(self) -> Descriptor:
        return self.descriptors()[0]

    def layers(self) -> list[Descriptor]:
        return self.descriptors()[1:]


def make_manifest(raw: bytes, content_type: str | None, expected_digest: str | None) -> Manifest:
    """Check the size, type and (when pinned) digest of raw manifest bytes."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise RegistryError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes")
    digest = digest_of(raw, expected_digest or "sha256:")
    if expected_digest is not None and digest != expected_digest:
        raise VerificationError(f"manifest digest is {digest}, expected {expected_digest}")
    media_type = (content_type or "").split(";", 1)[0].strip()
    if media_type not in IMAGE_MANIFESTS | INDEXES:
        media_type = _sniff_media_type(raw, media_type)
    return Manifest(raw, media_type, digest)


def _sniff_media_type(raw: bytes, served: str) -> str:
    """Registries may send application/json; the document's mediaType then decides."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryError(f"manifest of type {served!r} is not JSON") from None
    declared = data.get("mediaType") if isinstance(data, dict) else None
    if declared in IMAGE_MANIFESTS | INDEXES:
        return str(declared)
    if isinstance(data, dict) and data.get("schemaVersion") == 2:
        return OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if isinstance(data, dict) and data.get("schemaVersion") == 1:
        raise RegistryError("Docker schema 1 manifests are not supported")
    raise RegistryError(f"unsupported manifest media type {served!r}")


def select_platform(index: Manifest, wanted: Platform) -> Descriptor:
    """The first index entry for ``wanted``; NotFoundError listing what the index has."""
    entries = index.descriptors()
    for entry in entries:
        if entry.platform is not None and wanted.matches(entry.platform):
            return entry
    have = ", ".join(sorted({str(e.platform) for e in entries if e.platform})) or "none"
    raise NotFoundError(f"no manifest for platform {wanted} in index {index.digest} "
                        f"(has: {have})")
