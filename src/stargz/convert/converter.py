"""Convert an image's layers to eStargz (or zstd:chunked) and write the converted image.

Order of writes keeps the destination consistent: every blob first, then each platform's config
and manifest (by digest), and the tag (index or manifest) last. A failure before the last step
leaves at most unreferenced blobs, never a tag that points at a broken image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from stargz.convert import mediatypes as mt
from stargz.convert.externaltoc import ExternalTOC, put_toc_image, toc_blob_descriptor
from stargz.convert.progress import ConvertProgress, PlainProgress
from stargz.convert.records import ConversionRecord, ConversionRecords
from stargz.convert.store import ImageStore
from stargz.errors import BuildError, FormatError
from stargz.estargz.tarinput import TarInput
from stargz.estargz.writer import BuildOptions, BuildResult, build
from stargz.registry.manifest import Descriptor, Manifest, Platform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    zstd_chunked: bool = False
    oci: bool = False
    chunk_size: int = 4 << 20
    level: int = 9
    min_chunk_size: int = 0
    prioritized: tuple[str, ...] = ()
    allow_missing_prioritized: bool = False
    platforms: tuple[str, ...] = ()  # "os/arch[/variant]"; empty = every platform
    parallel_layers: int = 2
    workdir: Path | None = None
    external_toc: bool = False  # ctr-remote's --estargz-external-toc: TOCs in <tag>-esgztoc
    keep_diff_id: bool = False  # --estargz-keep-diff-id (with external_toc)
    uncompress: bool = False  # --uncompress: plain tar layers, no eStargz
    # `stargz optimize`: each source layer's own prioritized files (by its digest), after
    # `prioritized`; every convertible layer is then rebuilt, eStargz ones included, so that
    # a layer the workload never read gets `.no.prefetch.landmark` instead of an old landmark
    layer_prioritized: Mapping[str, tuple[str, ...]] | None = None

    def prioritized_for(self, layer_digest: str | None) -> tuple[str, ...]:
        if self.layer_prioritized is None or layer_digest is None:
            return self.prioritized
        own = self.layer_prioritized.get(layer_digest, ())
        return tuple(dict.fromkeys(self.prioritized + own))

    def build_options(self, layer_digest: str | None = None) -> BuildOptions:
        return BuildOptions(
            chunk_size=self.chunk_size,
            level=self.level,
            min_chunk_size=self.min_chunk_size,
            prioritized=self.prioritized_for(layer_digest),
            allow_missing_prioritized=self.allow_missing_prioritized,
            compression="zstd-chunked" if self.zstd_chunked else "gzip",
            external_toc=self.external_toc,
            keep_diff_id=self.keep_diff_id,
        )

    def check(self) -> None:
        """Refuse combinations that mean nothing, before anything is downloaded."""
        per_layer = self.layer_prioritized is not None
        if self.uncompress and (self.zstd_chunked or self.external_toc or self.prioritized
                                or per_layer):
            raise BuildError("--uncompress writes plain tar layers: it takes no eStargz or "
                             "zstd:chunked option")
        if self.uncompress:
            return
        self.build_options().check()
        for digest in (self.layer_prioritized or {}):
            self.build_options(digest).check()

    def record_key(self, layer_digest: str | None = None) -> str:
        """What makes two conversions of one layer produce the same blob."""
        key = {
            "zstd": self.zstd_chunked,
            "chunk": self.chunk_size,
            "level": self.level,
            "min_chunk": self.min_chunk_size,
            "prio": list(self.prioritized_for(layer_digest)),
            "allow_missing": self.allow_missing_prioritized,
            "external_toc": self.external_toc,
            "keep_diff_id": self.keep_diff_id,
            "uncompress": self.uncompress,
        }
        if self.layer_prioritized is not None:  # rebuilt even when already eStargz
            key["optimized"] = True
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ConvertResult:
    digest: str
    media_type: str
    size: int
    layers_converted: int = 0
    layers_reused: int = 0
    manifests: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _ConvertedLayer:
    desc: Descriptor
    diff_id: str


class Converter:
    def __init__(
        self,
        source: ImageStore,
        dest: ImageStore,
        options: ConvertOptions,
        *,
        progress: ConvertProgress | None = None,
        records: ConversionRecords | None = None,
    ) -> None:
        self._source = source
        self._dest = dest
        self._options = options
        self._progress = progress or PlainProgress()
        self._records = records or ConversionRecords.default()
        self._layer_slots = asyncio.Semaphore(max(1, options.parallel_layers))
        self._result = ConvertResult(digest="", media_type="", size=0)
        self._tocs: list[ExternalTOC] = []

    async def convert(self, source_ref: str, dest_tag: str) -> ConvertResult:
        self._options.check()
        root = await self._source.get_manifest(source_ref)
        if root.media_type in mt.INDEX_TYPES:
            converted = await self._convert_index(root)
        elif root.media_type in mt.MANIFEST_TYPES:
            converted = await self._convert_manifest(root)
        else:
            raise FormatError(f"{source_ref}: unsupported manifest type {root.media_type!r}")
        if self._options.external_toc:  # before the image's tag: it must find its TOCs
            await put_toc_image(self._dest, dest_tag, self._tocs)
        await self._dest.put_manifest(dest_tag, converted)
        self._result.digest = converted.digest
        self._result.media_type = converted.media_type
        self._result.size = len(converted.raw)
        return self._result

    async def _convert_index(self, index: Manifest) -> Manifest:
        doc = index.json()
        entries: list[dict[str, Any]] = []
        for entry in doc.get("manifests") or []:
            desc = Descriptor.from_dict(entry)
            if not self._platform_wanted(desc.platform):
                continue
            child = await self._source.get_manifest(desc.digest)
            if child.media_type not in mt.MANIFEST_TYPES:
                raise FormatError(f"index entry {desc.digest}: unsupported type {child.media_type}")
            converted = await self._convert_manifest(child)
            entry.update(
                mediaType=converted.media_type, digest=converted.digest, size=len(converted.raw)
            )
            entries.append(entry)
        if not entries:
            wanted = ", ".join(self._options.platforms)
            raise BuildError(f"no manifest in the index matches the platforms {wanted}")
        media_type = mt.converted_index_type(index.media_type, **self._flags())
        doc.update(mediaType=media_type, manifests=entries)
        return _manifest_of(doc, media_type)

    async def _convert_manifest(self, manifest: Manifest) -> Manifest:
        doc = manifest.json()
        config_desc = Descriptor.from_dict(doc["config"])
        config = json.loads(await self._source.get_blob(config_desc.digest))
        diff_ids: list[str] = list(config.get("rootfs", {}).get("diff_ids") or [])
        layers = [Descriptor.from_dict(layer) for layer in doc.get("layers") or []]
        if len(diff_ids) != len(layers):
            raise FormatError(
                f"manifest {manifest.digest}: {len(layers)} layers but {len(diff_ids)} diff_ids"
            )
        pairs = zip(layers, diff_ids, strict=True)
        converted = await asyncio.gather(*(self._convert_layer(*pair) for pair in pairs))
        config["rootfs"]["diff_ids"] = [layer.diff_id for layer in converted]
        config_raw = json.dumps(config, separators=(",", ":")).encode()
        new_config = replace(
            config_desc,
            media_type=mt.converted_config_type(config_desc.media_type, **self._flags()),
            digest=_sha256(config_raw),
            size=len(config_raw),
        )
        await self._dest.push_blob(new_config, config_raw, lambda _: None)
        media_type = mt.converted_manifest_type(manifest.media_type, **self._flags())
        doc.update(
            mediaType=media_type,
            config=new_config.to_dict(),
            layers=[layer.desc.to_dict() for layer in converted],
        )
        new_manifest = _manifest_of(doc, media_type)
        await self._dest.put_manifest(new_manifest.digest, new_manifest)
        self._result.manifests.append(new_manifest.digest)
        return new_manifest

    async def _convert_layer(self, layer: Descriptor, diff_id: str) -> _ConvertedLayer:
        async with self._layer_slots:
            if self._already_converted(layer):
                await self._copy_blob(layer)
                self._result.layers_reused += 1
                self._progress.finish(layer.digest, "already converted: kept")
                return _ConvertedLayer(layer, diff_id)
            record = self._records.get(layer.digest, self._options.record_key(layer.digest))
            if record is not None and await self._reusable(record):
                self._note_toc(record)
                self._result.layers_reused += 1
                self._progress.finish(layer.digest, f"reused {record.digest[:19]}")
                return _ConvertedLayer(self._descriptor(layer, record), record.diff_id)
            record = await self._build_layer(layer)
            self._result.layers_converted += 1
            return _ConvertedLayer(self._descriptor(layer, record), record.diff_id)

    async def _build_layer(self, layer: Descriptor) -> ConversionRecord:
        key = layer.digest
        with tempfile.TemporaryDirectory(dir=self._options.workdir, prefix="stargz-conv-") as tmp:
            src_path, out_path = Path(tmp, "src"), Path(tmp, "out")
            self._progress.start(key, "downloading", layer.size)
            await self._source.fetch_blob(layer, src_path, lambda n: self._progress.advance(key, n))
            self._progress.start(key, "converting", layer.size)
            built = await asyncio.to_thread(self._build_file, layer.digest, src_path, out_path)
            self._note_missing(layer.digest, built)
            record = ConversionRecord.of(layer.digest, self._options.record_key(layer.digest),
                                         built)
            self._progress.start(key, "pushing", built.blob_size)
            desc = self._descriptor(layer, record)
            await self._dest.push_blob(desc, out_path, lambda n: self._progress.advance(key, n))
            if built.external_toc:
                toc = toc_blob_descriptor(record.toc_blob_digest, record.toc_blob_size)
                await self._dest.push_blob(toc, built.external_toc, lambda _: None)
        self._note_toc(record)
        self._records.put(record)
        self._progress.finish(key, f"converted to {record.digest[:19]} ({record.size} bytes)")
        return record

    def _build_file(self, digest: str, src_path: Path, out_path: Path) -> BuildResult:
        with src_path.open("rb") as src, out_path.open("wb") as out:
            if self._options.uncompress:
                return _uncompress(src, out)
            return build(src, out, self._options.build_options(digest))

    def _note_missing(self, digest: str, built: BuildResult) -> None:
        if built.missing_prioritized and self._options.layer_prioritized is not None:
            # a layer's own list names only files it has: a miss means a stale record
            log.warning("layer %s: %d prioritized files are not in the layer (first: %s)",
                        digest, len(built.missing_prioritized), built.missing_prioritized[0])

    async def _reusable(self, record: ConversionRecord) -> bool:
        """A recorded conversion whose blobs (the layer, and its TOC if external) are there."""
        if self._options.external_toc and not record.toc_blob_digest:
            return False
        blobs = [record.digest] + ([record.toc_blob_digest] if record.toc_blob_digest else [])
        return all([await self._dest.has_blob(blob) for blob in blobs])

    def _note_toc(self, record: ConversionRecord) -> None:
        if record.toc_blob_digest:
            self._tocs.append(
                ExternalTOC(record.digest, record.toc_blob_digest, record.toc_blob_size))

    async def _copy_blob(self, desc: Descriptor) -> None:
        if await self._dest.has_blob(desc.digest):
            return
        with tempfile.TemporaryDirectory(dir=self._options.workdir, prefix="stargz-copy-") as tmp:
            path = Path(tmp, "blob")
            self._progress.start(desc.digest, "copying", desc.size)
            await self._source.fetch_blob(desc, path, lambda n: None)
            await self._dest.push_blob(desc, path, lambda n: None)

    def _already_converted(self, layer: Descriptor) -> bool:
        if layer.media_type not in mt.CONVERTIBLE_LAYERS:
            return True  # foreign layers are never converted, only carried over
        if self._options.layer_prioritized is not None:
            return False  # optimizing: every layer gets this workload's order and landmark
        if self._options.uncompress:
            return layer.media_type in (mt.OCI_LAYER, mt.DOCKER_LAYER)
        zstd = self._options.zstd_chunked
        if zstd != (layer.media_type == mt.OCI_LAYER_ZSTD):
            return False
        wanted = mt.ZSTD_CHUNKED_ANNOTATIONS if zstd else mt.ESTARGZ_ANNOTATIONS
        return wanted <= layer.annotations.keys()

    def _descriptor(self, layer: Descriptor, record: ConversionRecord) -> Descriptor:
        if self._options.uncompress:  # what the layer was compressed as no longer applies
            stale = mt.ESTARGZ_ANNOTATIONS | mt.ZSTD_CHUNKED_ANNOTATIONS
            return Descriptor(
                media_type=mt.uncompressed_layer_type(layer.media_type, oci=self._options.oci),
                digest=record.digest, size=record.size,
                annotations={k: v for k, v in layer.annotations.items() if k not in stale})
        return Descriptor(
            media_type=mt.converted_layer_type(layer.media_type, **self._flags()),
            digest=record.digest,
            size=record.size,
            annotations={**layer.annotations, **record.annotations},
        )

    def _platform_wanted(self, platform: Platform | None) -> bool:
        if not self._options.platforms:
            return True
        return platform is not None and any(
            Platform.parse(wanted).matches(platform) for wanted in self._options.platforms
        )

    def _flags(self) -> dict[str, bool]:
        return {"oci": self._options.oci, "zstd_chunked": self._options.zstd_chunked}


def _uncompress(src: BinaryIO, out: BinaryIO) -> BuildResult:
    """The layer as a plain tar (``--uncompress``): its digest is its diff_id."""
    tar = TarInput(src)
    digest = hashlib.sha256()
    size = 0
    while piece := tar.read(4 << 20):
        out.write(piece)
        digest.update(piece)
        size += len(piece)
    plain = "sha256:" + digest.hexdigest()
    return BuildResult(toc_digest="", diff_id=plain, blob_digest=plain, blob_size=size,
                       uncompressed_size=size, compression="gzip", toc_offset=0)


def _manifest_of(doc: dict[str, Any], media_type: str) -> Manifest:
    raw = json.dumps(doc, indent=2).encode()
    return Manifest(raw=raw, media_type=media_type, digest=_sha256(raw))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
