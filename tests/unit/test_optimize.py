"""`stargz optimize`'s pure parts: paths to layers (whiteouts, opaque dirs), globs, the record's
per-layer lists, the workload from an image config, the runtime spec, users from the image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stargz.convert.converter import ConvertOptions
from stargz.convert.workload import RecordEntry
from stargz.errors import BuildError, InvalidArgumentError
from stargz.optimize.layerfiles import ImageFiles
from stargz.optimize.optimizer import Recording, _entries, _placed
from stargz.optimize.sandbox import (
    DEFAULT_PATH,
    Workload,
    merge_env,
    resolve_user,
    runtime_spec,
)
from stargz.registry.manifest import Manifest

BASE = [("bin", "dir"), ("bin/sh", "reg"), ("etc", "dir"), ("etc/motd", "reg"),
        ("etc/gone", "reg"), ("opt", "dir"), ("opt/app", "dir"), ("opt/app/old.py", "reg"),
        ("usr/lib/libc.so.6", "reg"), ("usr/lib/big.bin", "chunk")]
MIDDLE = [("etc", "dir"), ("etc/motd", "reg"), ("etc/.wh.gone", "reg"),
          ("opt/app/.wh..wh..opq", "reg"), ("opt/app/new.py", "reg")]
TOP = [("usr", "dir"), ("usr/.wh.lib", "reg"), ("srv/x", "reg")]


def files() -> ImageFiles:
    return ImageFiles.from_entries([BASE, MIDDLE, TOP])


def test_a_path_belongs_to_the_top_most_layer_that_has_it() -> None:
    image = files()
    assert image.layer_of("bin/sh") == 0
    assert image.layer_of("/etc/motd") == 1  # the middle layer replaced it
    assert image.layer_of("./srv/x") == 2


def test_whiteouts_and_opaque_directories_hide_lower_layers() -> None:
    image = files()
    assert image.layer_of("etc/gone") is None  # .wh.gone above it
    assert image.layer_of("opt/app/old.py") is None  # its directory is opaque above it
    assert image.layer_of("opt/app/new.py") == 1  # the opaque layer's own file is there
    assert image.layer_of("usr/lib/libc.so.6") is None  # a parent directory whited out
    assert image.layer_of("etc/.wh.gone") is None  # whiteouts are no files of the image
    assert image.layer_of("nowhere") is None
    assert image.layer_of(".prefetch.landmark") is None


def test_assign_keeps_first_access_order_per_layer() -> None:
    paths = ["etc/motd", "bin/sh", "tmp/written-by-the-workload", "srv/x", "/bin/sh",
             "opt/app/new.py"]
    assert files().assign(paths) == {1: ["etc/motd", "opt/app/new.py"], 0: ["bin/sh"],
                                     2: ["srv/x"]}


def test_globs_expand_to_visible_files_in_image_order() -> None:
    image = files()
    assert image.expand(["etc/*"]) == ["etc/motd"]  # not etc/gone, nor the whiteout
    assert image.expand(["**/*.py"]) == ["opt/app/new.py"]
    assert image.expand(["opt/*.py"]) == []  # `*` stays in its directory
    assert image.expand(["bin/s?", "srv/[xy]", "/plain/path"]) == ["bin/sh", "srv/x",
                                                                    "plain/path"]


def _manifest(layers: int) -> Manifest:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": "sha256:" + "c" * 64, "size": 1},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": f"sha256:{i:064x}", "size": 1} for i in range(layers)]}
    raw = json.dumps(doc).encode()
    return Manifest(raw=raw, media_type=doc["mediaType"], digest="sha256:" + "d" * 64)


def test_a_record_for_this_manifest_keeps_its_layers_and_order() -> None:
    manifest = _manifest(3)
    record = [RecordEntry("etc/motd", manifest.digest, 1),
              RecordEntry("bin/sh", manifest.digest, 0),
              RecordEntry("srv/x", "sha256:" + "e" * 64, 2),  # another manifest's
              RecordEntry("x", manifest.digest, 7)]  # no such layer
    placed = _placed(record, manifest)
    assert placed == record[:2]
    entries = _entries(files(), manifest.digest, [e.path for e in record], placed)
    assert [(e.path, e.layer_index) for e in entries] == [("etc/motd", 1), ("bin/sh", 0),
                                                          ("srv/x", 2)]
    per_layer = Recording(manifest, entries).per_layer()
    assert per_layer == {f"sha256:{1:064x}": ("etc/motd",), f"sha256:{0:064x}": ("bin/sh",),
                         f"sha256:{2:064x}": ("srv/x",)}


def test_per_layer_prioritized_lists_reach_each_layer_and_its_record_key() -> None:
    options = ConvertOptions(prioritized=("etc/a",), layer_prioritized={"sha256:1": ("bin/sh",)})
    assert options.build_options("sha256:1").prioritized == ("etc/a", "bin/sh")
    assert options.build_options("sha256:2").prioritized == ("etc/a",)
    assert options.record_key("sha256:1") != options.record_key("sha256:2")
    plain = ConvertOptions(prioritized=("etc/a",))
    assert plain.record_key("sha256:2") != options.record_key("sha256:2")  # rebuilt either way
    with pytest.raises(BuildError):
        ConvertOptions(uncompress=True, layer_prioritized={}).check()


def test_the_workload_comes_from_the_image_config_with_overrides() -> None:
    config = {"config": {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port=80"],
                         "Env": ["A=1", "PATH=/custom"], "WorkingDir": "/srv", "User": "www"}}
    plain = Workload.of(config)
    assert plain == Workload(("/entry", "serve", "--port=80"), ("A=1", "PATH=/custom"), "/srv",
                             "www")
    changed = Workload.of(config, entrypoint=["python3", "-c"], args=["print(1)"],
                          env=["A=2", "B=3"], cwd="/", user="0")
    assert changed == Workload(("python3", "-c", "print(1)"), ("A=2", "PATH=/custom", "B=3"),
                               "/", "0")
    assert Workload.of(config, entrypoint=["/other"]).args == ("/other", "serve", "--port=80")
    assert merge_env([], []) == [DEFAULT_PATH]
    with pytest.raises(InvalidArgumentError):
        Workload.of({"config": {}})
    with pytest.raises(InvalidArgumentError):
        merge_env([], ["NOEQUALS"])


def test_users_resolve_through_the_image_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                         "www:x:33:34::/var/www:/bin/false\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nwww-data:x:34:\nstaff:x:50:www,other\n")
    assert resolve_user(tmp_path, "") == (0, 0, [])
    assert resolve_user(tmp_path, "www") == (33, 34, [50])
    assert resolve_user(tmp_path, "33") == (33, 34, [50])
    assert resolve_user(tmp_path, "www:staff") == (33, 50, [])
    assert resolve_user(tmp_path, "1000:1000") == (1000, 1000, [])
    with pytest.raises(InvalidArgumentError):
        resolve_user(tmp_path, "nobody")
    with pytest.raises(InvalidArgumentError):
        resolve_user(tmp_path, "www:nogroup")


def test_the_runtime_spec_runs_the_workload_without_network_unless_asked() -> None:
    base = {"process": {"terminal": True, "args": ["sh"], "capabilities": {}},
            "root": {"path": "rootfs", "readonly": True}, "mounts": [],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}}
    workload = Workload(("python3", "-c", "1"), ("PATH=/bin",), "/srv", "")
    spec = runtime_spec(base, Path("/mnt/root"), workload, (33, 34, [50]), net_host=False)
    assert spec["process"]["args"] == ["python3", "-c", "1"]
    assert spec["process"]["terminal"] is False
    assert spec["process"]["user"] == {"uid": 33, "gid": 34, "additionalGids": [50]}
    assert spec["root"] == {"path": "/mnt/root", "readonly": False}
    assert {"type": "network"} in spec["linux"]["namespaces"]
    assert base["root"]["readonly"] is True  # the base is left as it was
    host = runtime_spec(base, Path("/mnt/root"), workload, (0, 0, []), net_host=True)
    assert {"type": "network"} not in host["linux"]["namespaces"]
    assert [m["destination"] for m in host["mounts"]] == ["/etc/resolv.conf", "/etc/hosts"]
