"""Reference parsing: Docker Hub defaults, hosts with ports, tags, digests, oci: layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.errors import InvalidReference
from stargz.registry.reference import Reference, registry_endpoint_host

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("user/app", "docker.io", "user/app", None, None),
        ("docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None),
        ("127.0.0.1:5000/test/img:v1", "127.0.0.1:5000", "test/img", "v1", None),
        ("localhost/img", "localhost", "img", None, None),
        ("ghcr.io/a/b/c@" + DIGEST, "ghcr.io", "a/b/c", None, DIGEST),
        ("ghcr.io/a/b:t@" + DIGEST, "ghcr.io", "a/b", "t", DIGEST),
        ("reg.example:443/a__b/c-d.e:T_1", "reg.example:443", "a__b/c-d.e", "T_1", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None,
               digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag,
                                                                    digest)
    assert not ref.is_layout


def test_str_and_object() -> None:
    ref = Reference.parse("busybox")
    assert str(ref) == "docker.io/library/busybox"
    assert ref.object == "latest"
    pinned = ref.with_digest(DIGEST)
    assert pinned.object == DIGEST
    assert str(pinned) == f"docker.io/library/busybox@{DIGEST}"
    assert str(Reference.parse("h:1/a:b")) == "h:1/a:b"
    assert registry_endpoint_host("docker.io") == "registry-1.docker.io"
    assert registry_endpoint_host("h:1") == "h:1"


@pytest.mark.parametrize(
    "text",
    ["", " busybox", "Upper", "h:5000/Upper", "a//b", "a/b:", "a/b:-bad", "a@sha256:1234",
     "a@sha256:" + "AB" * 32, "a@md5", "-a/b", "a/b-", "host:5000/", "a/" + "b" * 300,
     "a:b:c"],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "directory", "tag"),
    [("oci:/tmp/layout", "/tmp/layout", None), ("oci:/tmp/layout:v2", "/tmp/layout", "v2"),
     ("oci:rel/dir", "rel/dir", None), ("oci:/a:b/c", "/a:b/c", None)],
)
def test_layout(text: str, directory: str, tag: str | None) -> None:
    ref = Reference.parse(text)
    assert ref.layout == Path(directory)
    assert ref.tag == tag
    assert ref.is_layout
    assert str(ref) == text


def test_layout_needs_directory() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("oci:")
