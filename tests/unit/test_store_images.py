"""The store's descriptions of images (info as podman decodes it), its names, its saved state and
its settings: no registry, no FUSE."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from stargz.errors import ConfigError, NotFoundError, RegistryError
from stargz.estargz.writer import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from stargz.registry.manifest import OCI_MANIFEST, Manifest, sha256_digest
from stargz.store.images import (
    COMPRESSION_GZIP,
    COMPRESSION_ZSTD,
    LayerInfo,
    describe_image,
    image_dirname,
    parse_layer_digest,
    ref_of_dirname,
)
from stargz.store.settings import load_settings
from stargz.store.state import HeldLayer, StateFile

D1, D2, D3 = (sha256_digest(bytes([i])) for i in range(3))
DIFF1, DIFF2, DIFF3 = (sha256_digest(bytes([i, i])) for i in range(3))
TOC = sha256_digest(b"toc")


def manifest(layers: list[dict[str, object]]) -> Manifest:
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": sha256_digest(b"c"), "size": 1},
                      "layers": layers}).encode()
    return Manifest(raw, OCI_MANIFEST, sha256_digest(raw))


def config(*diff_ids: str) -> bytes:
    return json.dumps({"rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}).encode()


LAYERS = [
    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D1, "size": 100,
     "annotations": {TOC_DIGEST_ANNOTATION: TOC, UNCOMPRESSED_SIZE_ANNOTATION: "4096"}},
    {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D2, "size": 200,
     "annotations": {TOC_DIGEST_ANNOTATION: TOC}},
    {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D3,
     "size": 300},
]


def test_info_is_what_the_reference_store_writes() -> None:
    layers = describe_image(manifest(LAYERS), config(DIFF1, DIFF2, DIFF3))
    assert json.loads(layers[D1].info_json()) == {
        "compressed-diff-digest": D1, "compressed-size": 100, "diff-digest": DIFF1,
        "diff-size": 4096, "compression": COMPRESSION_GZIP}
    # no uncompressed-size annotation: the field is left out (Go's omitempty)
    assert json.loads(layers[D2].info_json()) == {
        "compressed-diff-digest": D2, "compressed-size": 200, "diff-digest": DIFF2,
        "compression": COMPRESSION_ZSTD}
    assert layers[D1].info_json().endswith(b"}\n")  # one line, as json.Encoder writes
    assert layers[D1].toc_digest == TOC and layers[D3].toc_digest == ""


def test_a_config_that_does_not_match_the_manifest_is_refused() -> None:
    with pytest.raises(RegistryError, match="3 layers but its config 2 diff_ids"):
        describe_image(manifest(LAYERS), config(DIFF1, DIFF2))
    with pytest.raises(RegistryError, match=r"no rootfs\.diff_ids"):
        describe_image(manifest(LAYERS), b'{"rootfs": {}}')


def test_directory_names_are_base64_of_the_reference() -> None:
    ref = "127.0.0.1:5000/test/python:estargz"
    name = image_dirname(ref)
    assert name == base64.b64encode(ref.encode()).decode()
    text, parsed = ref_of_dirname(name)
    assert text == ref and parsed.registry == "127.0.0.1:5000" and parsed.tag == "estargz"
    pinned = f"docker.io/library/busybox@{D1}"
    assert ref_of_dirname(image_dirname(pinned))[1].digest == D1
    for bad in ("not base64!", image_dirname("UPPER/Case"), ".Trash", ""):
        with pytest.raises(NotFoundError):
            ref_of_dirname(bad)
    assert parse_layer_digest(D1) == D1
    for bad in ("sha256:abc", "use", D1.upper()):
        with pytest.raises(NotFoundError):
            parse_layer_digest(bad)


def test_state_round_trips_and_a_broken_file_is_set_aside(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    assert state.load() == []
    info = LayerInfo(D1, 100, DIFF1, None, COMPRESSION_GZIP, TOC)
    held = [HeldLayer("reg/app:v1", info, 2), HeldLayer("reg/app:v2", info, 0)]
    state.save(held)
    assert state.load() == [held[0]]  # layers nobody holds are not kept
    state.path.write_text('{"version": 1, "layers": [{"ref": 1}]}')
    assert state.load() == []
    assert (tmp_path / "layers.json.broken").exists() and not state.path.exists()


def test_settings_take_the_lazy_table_and_the_store_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[store]\nroot = "/srv/store"\nauthfile = "/etc/auth.json"\n'
                    '[lazy]\nprefetch_timeout_sec = 3\nplain_http = ["reg:5000"]\n'
                    '[lazy.blob]\nmax_retries = 2\n')
    settings = load_settings(tmp_path / "mnt", path, insecure_hosts=("other:80",))
    assert settings.root == Path("/srv/store") and settings.authfile == Path("/etc/auth.json")
    assert settings.layer.prefetch_timeout_sec == 3 and settings.layer.blob.max_retries == 2
    assert settings.layer.cache.directory == "/srv/store/cache"
    assert settings.insecure_hosts == ("reg:5000", "other:80")
    flags = load_settings(tmp_path / "mnt", path, root=tmp_path / "r",
                          authfile=tmp_path / "a.json")
    assert flags.root == tmp_path / "r" and flags.authfile == tmp_path / "a.json"
    path.write_text('[store]\nroots = "/x"\n')
    with pytest.raises(ConfigError, match=r"unknown config key 'store\.roots'"):
        load_settings(tmp_path / "mnt", path)
    path.write_text('[store]\nroot = "relative"\n')
    with pytest.raises(ConfigError, match="absolute"):
        load_settings(tmp_path / "mnt", path)


def test_contrib_unit_and_storage_conf_name_the_same_store() -> None:
    import shlex
    import tomllib

    from stargz.cli.main import build_parser

    contrib = Path(__file__).resolve().parents[2] / "contrib"
    unit = (contrib / "stargz-store.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0] == "/usr/local/bin/stargz"  # where README installs it (as the snapshotter)
    args = build_parser().parse_args(argv[1:])
    storage = tomllib.loads((contrib / "storage.conf").read_text())
    [store] = storage["storage"]["options"]["additionallayerstores"]
    assert store == f"{args.mountpoint}:ref"
    settings = load_settings(args.mountpoint, args.config, root=args.root)
    assert settings.root == Path("/var/lib/stargz-store")
    assert settings.layer.cache.directory == "/var/lib/stargz-store/cache"
