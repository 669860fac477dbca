"""Image references: ``[registry/]repo[:tag][@digest]`` (Docker Hub defaults) and ``oci:DIR[:TAG]``.

The grammar follows the distribution project's reference package: the first path component is a
registry only when it looks like a host (has a ``.`` or ``:``, or is ``localhost``); otherwise the
image lives on Docker Hub, where one-component names get the ``library/`` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from stargz.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", DOCKER_HUB}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(?P<alg>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[0-9a-fA-F]{32,})")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
MAX_NAME_LENGTH = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``alg:hex`` with the right length for known algorithms."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise InvalidReference(f"invalid digest {digest!r}")
    want = _HEX_LENGTHS.get(match["alg"])
    if want is not None and len(match["hex"]) != want:
        raise InvalidReference(f"invalid {match['alg']} digest {digest!r}: wrong length")
    if match["hex"] != match["hex"].lower():
        raise InvalidReference(f"invalid digest {digest!r}: hex must be lower case")
    return digest


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``layout`` is set (and ``registry`` empty) for ``oci:DIR``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    layout: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if text.startswith("oci:"):
            return _parse_layout(text[4:])
        return _parse_remote(text)

    @property
    def is_layout(self) -> bool:
        return self.layout is not None

    @property
    def name(self) -> str:
        """``registry/repository`` (or the layout directory)."""
        if self.layout is not None:
            return f"oci:{self.layout}"
        return f"{self.registry}/{self.repository}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def repo_only(self) -> Reference:
        """The same repository with no tag or digest (blob operations need only this)."""
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        if self.layout is not None:
            return f"oci:{self.layout}" + (f":{self.tag}" if self.tag else "")
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _parse_layout(rest: str) -> Reference:
    if not rest:
        raise InvalidReference("invalid reference 'oci:': no directory")
    directory, tag = rest, None
    head, sep, tail = rest.rpartition(":")
    # A colon belongs to the tag only when what follows it is not a path.
    if sep and head and "/" not in tail:
        directory, tag = head, tail
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r} in reference 'oci:{rest}'")
    return Reference(registry="", repository="", tag=tag, layout=Path(directory))


def _parse_remote(text: str) -> Reference:
    if not text or text != text.strip():
        raise InvalidReference(f"invalid reference {text!r}: empty or surrounded by spaces")
    remainder, digest = text, None
    if "@" in text:
        remainder, _, digest = text.partition("@")
        validate_digest(digest)
    registry, path = _split_registry(remainder, text)
    path, tag = _split_tag(path, text)
    registry, path = _apply_hub_defaults(registry, path)
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(f"invalid reference {text!r}: bad repository component "
                                   f"{component!r} (lower case letters, digits, separators)")
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(f"invalid reference {text!r}: name longer than 255 characters")
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def _split_registry(remainder: str, text: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not sep or not looks_like_host:
        return DOCKER_HUB, remainder
    if not _HOST.fullmatch(first):
        raise InvalidReference(f"invalid reference {text!r}: bad registry host {first!r}")
    return first, rest


def _split_tag(path: str, text: str) -> tuple[str, str | None]:
    name, sep, tag = path.rpartition(":")
    if not sep:
        return path, None
    if not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid reference {text!r}: bad tag {tag!r}")
    return name, tag


def _apply_hub_defaults(registry: str, path: str) -> tuple[str, str]:
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return registry, path


def registry_endpoint_host(registry: str) -> str:
    """The host that serves a registry's API: Docker Hub's name differs from its endpoint."""
    return DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry
