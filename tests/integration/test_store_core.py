"""The store's FUSE-free core against the real registry and the real layer service: what podman
would see at each path, its use counts, the blob's bytes, restarts and letting go. No FUSE: the
core's operations are called as the adapter calls them."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stargz.config import CacheConfig, Config
from stargz.errors import VerificationError
from stargz.estargz.writer import UNCOMPRESSED_SIZE_ANNOTATION
from stargz.fs.errmap import errno_for
from stargz.fs.tree import FSCore, Node
from stargz.layer.service import LayerService
from stargz.registry.client import RegistryClient
from stargz.registry.credentials import CredentialStore
from stargz.registry.hosts import HostsConfig
from stargz.store.core import StoreCore, StoreNode
from stargz.store.images import ImagePool, image_dirname
from stargz.store.layers import StoreLayers
from tests.integration.test_mount_image import (  # noqa: F401 (fixtures are found by name)
    LAYER2_TEXT,
    build_images,
    registry_fixture,
)
from tests.support.faultproxy import FaultProxy
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

T = TypeVar("T")
CONFIG = Config(no_background_fetch=True)


@pytest.fixture(scope="module", name="layouts")
def layouts_fixture(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("layouts")
    build_images(registry.host, work)
    return work


def layout_layers(layout: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(layer descriptors, diff_ids) of the layout's one image."""
    def blob(digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
        return data

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    return manifest["layers"], blob(manifest["config"]["digest"])["rootfs"]["diff_ids"]


@contextlib.asynccontextmanager
async def running_core(registry: RunningRegistry, root: Path, idle_sec: float = 120.0,
                       config: Config = CONFIG) -> AsyncIterator[StoreCore]:
    client = RegistryClient(HostsConfig.create(plain_http_localhost=True), CredentialStore())
    async with LayerService(config, client, owns_registry=True) as service:
        layers = StoreLayers(service, client, ImagePool(client, 120.0), root, idle_sec)
        await layers.restore()
        try:
            yield StoreCore(FSCore(), layers)
        finally:
            await layers.close()


def run(registry: RunningRegistry, root: Path, test: Callable[[StoreCore], Awaitable[T]],
        idle_sec: float = 120.0, config: Config = CONFIG) -> T:
    async def go() -> T:
        async with running_core(registry, root, idle_sec, config) as core:
            return await test(core)

    return asyncio.run(go())


async def layer_dir(core: StoreCore, ref: str, digest: str) -> StoreNode:
    image = await core.lookup(core.root.ino, image_dirname(ref))
    assert isinstance(image, StoreNode)
    layer = await core.lookup(image.ino, digest)
    assert isinstance(layer, StoreNode)
    return layer


async def read_all(core: StoreCore, node: StoreNode, piece: int = 1 << 20) -> bytes:
    parts, offset = [], 0
    while data := await core.read(node, offset, piece):
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


async def fails_with(code: int, call: Awaitable[object]) -> None:
    with pytest.raises(Exception) as caught:
        await call
    assert errno_for(caught.value) == code, caught.value


@pytest.fixture(name="ref")
def ref_fixture(registry: RunningRegistry, layouts: Path) -> str:
    return f"{registry.host}/test/estargz:v1"


def test_lookups_resolve_and_info_is_the_manifest_s(registry: RunningRegistry, layouts: Path,
                                                    ref: str, tmp_path: Path) -> None:
    descriptors, diff_ids = layout_layers(layouts / "estargz")
    top = descriptors[-1]

    async def test(core: StoreCore) -> None:
        assert core.listing(core.root.ino) == {}  # nothing until looked up
        layer = await layer_dir(core, ref, top["digest"])
        assert list(core.listing(core.root.ino)) == [image_dirname(ref)]
        assert core.listing(layer.ino) == {}
        info = await core.lookup(layer.ino, "info")
        assert isinstance(info, StoreNode)
        assert json.loads(await read_all(core, info)) == {
            "compressed-diff-digest": top["digest"], "compressed-size": top["size"],
            "diff-digest": diff_ids[-1],
            "diff-size": int(top["annotations"][UNCOMPRESSED_SIZE_ANNOTATION]),
            "compression": 2}
        blob = await core.lookup(layer.ino, "blob")
        assert isinstance(blob, StoreNode) and core.getattr(blob.ino).size == top["size"]
        diff = await core.lookup(layer.ino, "diff")
        assert isinstance(diff, Node) and "etc" in core.files.listing(diff.ino)
        assert list(core.listing(layer.ino)) == ["blob", "diff", "info"]
        etc = core.files.lookup(diff.ino, "etc")
        text = await core.files.read(core.files.lookup(etc.ino, "layer2"), 0, 100)
        assert text == LAYER2_TEXT
        await fails_with(errno.ENOENT, core.lookup(layer.ino, "use"))
        await fails_with(errno.ENOENT, core.lookup(core.root.ino, "not-a-reference"))
        image = core.parent(layer.ino)
        await fails_with(errno.ENOENT, core.lookup(image.ino, "sha256:abc"))
        absent = await core.lookup(image.ino, "sha256:" + "0" * 64)  # a name, no request yet
        await fails_with(errno.ENOENT, core.lookup(absent.ino, "diff"))  # not in the image

    run(registry, tmp_path, test)


def test_a_gzip_layer_is_not_found_so_podman_pulls_it(registry: RunningRegistry, layouts: Path,
                                                      tmp_path: Path) -> None:
    descriptors, _ = layout_layers(layouts / "gzip")

    async def test(core: StoreCore) -> None:
        layer = await layer_dir(core, f"{registry.host}/test/gzip:v1", descriptors[0]["digest"])
        for name in ("diff", "info", "blob"):
            await fails_with(errno.ENOENT, core.lookup(layer.ino, name))
        await fails_with(errno.ENOENT, core.create(layer.ino, "use"))
        assert core.layers.entries() == []

    run(registry, tmp_path, test)


def test_uses_are_counted_and_the_last_release_lets_go(registry: RunningRegistry, layouts: Path,
                                                       ref: str, tmp_path: Path) -> None:
    digest = layout_layers(layouts / "estargz")[0][0]["digest"]

    async def test(core: StoreCore) -> None:
        service = core.layers.service
        layer = await layer_dir(core, ref, digest)
        await core.lookup(layer.ino, "diff")
        assert service.uses(digest) == 1
        for _ in range(2):  # podman: LookupAdditionalLayer, then CreateAs
            await fails_with(errno.ENOENT, core.create(layer.ino, "use"))
        image = core.parent(layer.ino)
        await fails_with(errno.ENOENT, core.rmdir(image.ino, digest))  # al.Release()
        assert saved_uses(tmp_path) == {digest: 1}
        assert service.uses(digest) == 1 and core.files.layer_names() != []
        await fails_with(errno.ENOENT, core.rmdir(image.ino, digest))  # the image removed
        assert service.uses(digest) == 0 and core.files.layer_names() == []
        assert saved_uses(tmp_path) == {}
        await fails_with(errno.ENOENT, core.rmdir(image.ino, digest))  # once too many: no harm
        await fails_with(errno.EROFS, core.create(image.ino, "use"))
        await fails_with(errno.EROFS, core.rmdir(core.root.ino, image.name))

    run(registry, tmp_path, test)


def saved_uses(root: Path) -> dict[str, int]:
    state = json.loads((root / "layers.json").read_text())
    return {item["layer"]["digest"]: item["uses"] for item in state["layers"]}


def test_blob_is_the_registry_s_bytes_checked_before_any_is_served(
        registry: RunningRegistry, layouts: Path, ref: str, tmp_path: Path) -> None:
    base, top = layout_layers(layouts / "estargz")[0]

    async def test(core: StoreCore) -> None:
        blob = await core.lookup((await layer_dir(core, ref, top["digest"])).ino, "blob")
        assert isinstance(blob, StoreNode)
        data = await read_all(core, blob, 100_000)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == top["digest"]
        with tampered(registry, base["digest"], 1000):
            bad = await core.lookup((await layer_dir(core, ref, base["digest"])).ino, "blob")
            assert isinstance(bad, StoreNode)
            with pytest.raises(VerificationError):
                await core.read(bad, 0, 4096)
        assert [p.name for p in (tmp_path / "blobs").iterdir()] == [
            top["digest"].replace(":", "-")]

    run(registry, tmp_path, test)
    assert list((tmp_path / "blobs").iterdir()) == []  # copies go with the store


@contextlib.contextmanager
def tampered(registry: RunningRegistry, digest: str, offset: int) -> Iterator[None]:
    hex_digest = digest.split(":")[1]
    data = (registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hex_digest[:2]
            / hex_digest / "data")
    with data.open("r+b") as blob:
        blob.seek(offset)
        original = blob.read(1)
        blob.seek(offset)
        blob.write(bytes([original[0] ^ 0xFF]))
    try:
        yield
    finally:
        with data.open("r+b") as blob:
            blob.seek(offset)
            blob.write(original)


def test_a_restarted_store_keeps_podman_s_uses(registry: RunningRegistry, layouts: Path,
                                                tmp_path: Path) -> None:
    """...and serves the layer again without asking the registry (the description saved with
    the uses, the TOC kept on disk by the layer service)."""
    digest = layout_layers(layouts / "estargz")[0][-1]["digest"]
    config = Config(no_background_fetch=True,
                    cache=CacheConfig(directory=str(tmp_path / "cache")))
    host, port = registry.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        ref = f"{proxy.host}/test/estargz:v1"

        async def first(core: StoreCore) -> None:
            layer = await layer_dir(core, ref, digest)
            await core.lookup(layer.ino, "diff")
            await fails_with(errno.ENOENT, core.create(layer.ino, "use"))

        async def second(core: StoreCore) -> None:
            [entry] = core.layers.entries()
            assert entry.key == (ref, digest) and entry.uses == 1
            asked = len(proxy.served())
            layer = await layer_dir(core, ref, digest)
            diff = await core.lookup(layer.ino, "diff")
            assert "etc" in core.files.listing(diff.ino)
            info = await core.lookup(layer.ino, "info")
            assert isinstance(info, StoreNode)
            assert json.loads(await read_all(core, info))["compressed-diff-digest"] == digest
            assert proxy.served()[asked:] == []
            await fails_with(errno.ENOENT, core.rmdir(core.parent(layer.ino).ino, digest))
            assert core.layers.service.uses(digest) == 0 and core.layers.entries() == []

        run(registry, tmp_path, first, config=config)
        run(registry, tmp_path, second, config=config)
    assert saved_uses(tmp_path) == {}


def test_layers_looked_up_but_never_used_are_let_go(registry: RunningRegistry, layouts: Path,
                                                    ref: str, tmp_path: Path) -> None:
    used, unused = (d["digest"] for d in layout_layers(layouts / "estargz")[0])

    async def test(core: StoreCore) -> None:
        diffs = [await core.lookup((await layer_dir(core, ref, digest)).ino, "diff")
                 for digest in (used, unused)]
        await fails_with(errno.ENOENT, core.create((await layer_dir(core, ref, used)).ino,
                                                   "use"))
        await asyncio.sleep(0.5)
        await core.expire()  # idle, but the kernel still holds the diff directory
        assert core.layers.service.uses(unused) == 1
        for diff in diffs:
            core.forget(diff.ino, 1)  # as the kernel's FORGET
        started = time.monotonic()
        while core.layers.service.uses(unused) and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)
            await core.expire()
        assert core.layers.service.uses(unused) == 0
        assert core.layers.service.uses(used) == 1
        assert [e.info.digest for e in core.layers.entries()] == [used]
        assert len(core.files.layer_names()) == 1

    run(registry, tmp_path, test, idle_sec=0.3)
