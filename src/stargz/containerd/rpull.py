"""Pull an image into containerd lazily, as ``ctr-remote images rpull`` does.

Under a lease: store the index, manifest and config in the content store (with the GC labels
that keep them together), then for each layer ask the snapshotter, through containerd, to
Prepare it with the remote-snapshot labels. ALREADY_EXISTS means the snapshotter mounted the
layer lazily; otherwise we do what containerd's unpacker does: download the blob, apply it onto
the prepared snapshot with the diff service and commit it under its chain id. Last, label the
config with the top snapshot (GC) and create or update the image record.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from stargz.containerd import labels as lbl
from stargz.containerd.client import Containerd
from stargz.containerd.content import ContentStore
from stargz.containerd.services import Differ, Images, Snapshots, descriptor
from stargz.errors import (
    AlreadyExistsError,
    RegistryError,
    RuntimeIntegrationError,
    StargzError,
    VerificationError,
)
from stargz.registry.client import RegistryClient
from stargz.registry.manifest import Descriptor, Manifest, Platform, select_platform
from stargz.registry.reference import Reference
from stargz.snapshotter.remote import LABEL_TOC_DIGEST

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOTTER = "stargz"
DEFAULT_PLATFORM = Platform("linux", "amd64")
MAX_CONFIG_SIZE = 16 << 20


@dataclass(frozen=True)
class PullOptions:
    snapshotter: str = DEFAULT_SNAPSHOTTER
    platform: Platform = DEFAULT_PLATFORM


@dataclass
class PullResult:
    name: str
    target_digest: str  # what the image record points at (index or manifest)
    manifest_digest: str
    chain_ids: list[str]
    lazy_layers: list[str] = field(default_factory=list)  # mounted remotely by the snapshotter
    fetched_layers: list[str] = field(default_factory=list)  # downloaded and applied
    fetched_chains: list[str] = field(default_factory=list)  # their snapshots (chain ids)
    present_layers: list[str] = field(default_factory=list)  # snapshot already there


@dataclass(frozen=True)
class _Image:
    """What the registry resolved: the record's target and the platform's manifest."""

    target: Manifest
    manifest: Manifest
    index_position: int | None  # the manifest's place in the index, when there is one
    config: Descriptor
    config_raw: bytes
    layers: list[Descriptor]
    diff_ids: list[str]


async def rpull(ctd: Containerd, registry: RegistryClient, ref: Reference,
                options: PullOptions = PullOptions()) -> PullResult:
    """Pull ``ref`` into containerd's namespace with lazily mounted layers where possible."""
    image = await _resolve(registry, ref, options.platform)
    chains = lbl.chain_ids(image.diff_ids)
    result = PullResult(str(ref), image.target.digest, image.manifest.digest, chains)
    async with ctd.lease():
        await _store_metadata(ContentStore(ctd), image)
        await _Unpacker(ctd, registry, ref, image, options.snapshotter).unpack(result)
        await ContentStore(ctd).update_labels(
            image.config.digest, lbl.snapshot_gc_label(options.snapshotter, chains[-1]))
        target = descriptor(image.target.media_type, image.target.digest, len(image.target.raw))
        await Images(ctd).put(result.name, target, {})
    return result


async def _resolve(registry: RegistryClient, ref: Reference, platform: Platform) -> _Image:
    target = await registry.fetch_manifest(ref)
    manifest, position = target, None
    if target.is_index:
        entry = select_platform(target, platform)
        position = target.descriptors().index(entry)
        manifest = await registry.fetch_manifest(ref.with_digest(entry.digest))
        if manifest.is_index:
            raise RegistryError(f"{ref}: nested indexes are not supported")
    config = manifest.config()
    if config.size > MAX_CONFIG_SIZE:
        raise RegistryError(f"{ref}: config of {config.size} bytes is too large")
    config_raw = await registry.get_blob(ref.repo_only(), config.digest)
    layers = manifest.layers()
    diff_ids = _diff_ids(config_raw, config.digest)
    if len(diff_ids) != len(layers) or not layers:
        raise RegistryError(f"{ref}: config lists {len(diff_ids)} diff ids for "
                            f"{len(layers)} layers")
    return _Image(target, manifest, position, config, config_raw, layers, diff_ids)


def _diff_ids(config_raw: bytes, digest: str) -> list[str]:
    try:
        data: Any = json.loads(config_raw)
        diff_ids = data["rootfs"]["diff_ids"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise RegistryError(f"config {digest} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise RegistryError(f"config {digest}: rootfs.diff_ids is not a list of digests")
    return list(diff_ids)


async def _store_metadata(content: ContentStore, image: _Image) -> None:
    """Config first, then the manifest and index that reference it (children before parents)."""
    await content.write_bytes(image.config.digest, image.config_raw, {})
    gc = lbl.manifest_gc_labels(image.config.digest, [layer.digest for layer in image.layers])
    await content.write_bytes(image.manifest.digest, image.manifest.raw, gc)
    if image.index_position is not None:
        await content.write_bytes(
            image.target.digest, image.target.raw,
            lbl.index_gc_label(image.index_position, image.manifest.digest))


class _Unpacker:
    """containerd's unpacker, remote-snapshot aware: one layer after the other, in order."""

    def __init__(self, ctd: Containerd, registry: RegistryClient, ref: Reference,
                 image: _Image, snapshotter: str) -> None:
        self.ctd, self.registry, self.ref, self.image = ctd, registry, ref, image
        self.snapshots = Snapshots(ctd, snapshotter)

    async def unpack(self, result: PullResult) -> None:
        parent = ""
        for index, chain in enumerate(result.chain_ids):
            layer = self.image.layers[index]
            if await self.snapshots.exists(chain):
                result.present_layers.append(layer.digest)
            elif await self._prepare(index, chain, parent):
                result.lazy_layers.append(layer.digest)
            else:
                result.fetched_layers.append(layer.digest)
                result.fetched_chains.append(chain)
            parent = chain

    async def _prepare(self, index: int, chain: str, parent: str) -> bool:
        """Ask for the layer remotely: True if the snapshotter mounted it, False if we had to
        download and apply it."""
        layer = self.image.layers[index]
        later = [later.digest for later in self.image.layers[index:]]
        labels = lbl.remote_labels(str(self.ref), chain, layer.digest, later,
                                   layer.annotations.get(LABEL_TOC_DIGEST))
        key = f"extract-{secrets.token_hex(8)} {chain}"
        try:
            mounts = await self.snapshots.prepare(key, parent, labels)
        except AlreadyExistsError:
            if not await self.snapshots.exists(chain):
                raise RuntimeIntegrationError(
                    f"snapshotter {self.snapshots.snapshotter} said layer {layer.digest} "
                    f"exists but has no snapshot {chain}") from None
            log.info("layer %s mounted lazily as %s", layer.digest, chain)
            return True
        try:
            await self._apply(layer, self.image.diff_ids[index], mounts)
            await self.snapshots.commit(chain, key, {})
        except AlreadyExistsError:  # a concurrent pull committed the same chain first
            await self._discard(key)
        except BaseException:
            await self._discard(key)
            raise
        return False

    async def _apply(self, layer: Descriptor, diff_id: str, mounts: Any) -> None:
        """The fallback: download into the content store, apply onto the active snapshot."""
        log.info("layer %s is not lazily available: downloading %d bytes",
                 layer.digest, layer.size)
        body = self.registry.stream_blob(self.ref.repo_only(), layer.digest)
        await ContentStore(self.ctd).write(layer.digest, layer.size, body,
                                           {lbl.LABEL_UNCOMPRESSED: diff_id})
        layer_desc = descriptor(layer.media_type, layer.digest, layer.size, layer.annotations)
        applied = await Differ(self.ctd).apply(layer_desc, mounts)
        if applied.digest != diff_id:
            raise VerificationError(f"layer {layer.digest} unpacked to {applied.digest}, "
                                    f"the config says {diff_id}")

    async def _discard(self, key: str) -> None:
        try:
            await self.snapshots.remove(key)
        except StargzError as err:
            log.warning("could not remove snapshot %s: %s", key, err)
