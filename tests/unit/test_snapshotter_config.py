"""The snapshotter's config: TOML [snapshotter] table, command-line flags over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.errors import ConfigError
from stargz.snapshotter.daemon import (
    DEFAULT_ADDRESS,
    DEFAULT_ROOT,
    SnapshotterConfig,
    build_parser,
    config_from_args,
    load_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stargz.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    assert load_config(None) == SnapshotterConfig(DEFAULT_ADDRESS, DEFAULT_ROOT, "info")
    assert Path("/run/stargz/stargz.sock") == DEFAULT_ADDRESS
    assert Path("/var/lib/stargz") == DEFAULT_ROOT


def test_file_values_and_flag_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[snapshotter]\naddress = "/tmp/s.sock"\nroot = "/tmp/r"\nlog_level = "DEBUG"\n'
        "[fuse]\nattr_timeout = 1\n",  # the reference's, meaning nothing here: a warning
    )
    assert load_config(path) == SnapshotterConfig(Path("/tmp/s.sock"), Path("/tmp/r"), "debug")
    args = build_parser().parse_args(["--config", str(path), "--root", "/srv/x"])
    assert config_from_args(args) == SnapshotterConfig(Path("/tmp/s.sock"), Path("/srv/x"), "debug")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[snapshotter]\nadress = "/x"\n', "unknown config key 'snapshotter.adress'"),
        ('[snapshotter]\nroot = "rel"\n', "'snapshotter.root' must be an absolute path"),
        ("[snapshotter]\nroot = 3\n", "'snapshotter.root' in .* must be a string, not 3"),
        ('[snapshotter]\nlog_level = "loud"\n', "log level 'loud'"),
        ("snapshotter = 1\n", "must be a table"),
        ("[snapshotter\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_contrib_files_agree_with_the_defaults() -> None:
    import tomllib

    contrib = Path(__file__).resolve().parents[2] / "contrib"
    assert load_config(contrib / "snapshotter.toml") == SnapshotterConfig()
    containerd = tomllib.loads((contrib / "containerd-config.toml").read_text())
    plugin = containerd["proxy_plugins"]["stargz"]
    assert plugin == {"type": "snapshot", "address": str(DEFAULT_ADDRESS)}
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri["disable_snapshot_annotations"] is False
    assert "stargz snapshotter --config" in (contrib / "stargz-snapshotter.service").read_text()


def test_the_unit_runs_stargz_where_the_readme_installs_it() -> None:
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "contrib" / "stargz-snapshotter.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    binary = Path(exec_start.removeprefix("ExecStart=").split()[0])
    readme = (repo / "README.md").read_text()
    assert f"ln -s /opt/stargz/bin/stargz {binary}" in readme
    assert f"PIPX_BIN_DIR={binary.parent} pipx install" in readme
