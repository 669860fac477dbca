"""HelloBench's runtime factory: every name of model.RUNTIMES is made, the Go ones only with a
peers directory holding their binary, and anything else is one clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.errors import ConfigError
from stargz.hellobench.model import RUNTIMES
from stargz.hellobench.runtimes import available_runtimes, create_runtime


def _peers(directory: Path) -> Path:
    for binary in ("stargzd", "stargzstore"):
        (directory / binary).write_bytes(b"")
    return directory


def test_every_runtime_is_made_with_its_name(tmp_path: Path) -> None:
    peers = _peers(tmp_path)
    for name in RUNTIMES:
        runtime = create_runtime(name, tmp_path / name, peers)
        assert runtime.name == name
    assert not any((tmp_path / name).exists() for name in RUNTIMES)  # nothing before start()


def test_the_go_runtimes_need_their_peer_binary(tmp_path: Path) -> None:
    assert available_runtimes(tmp_path) == tuple(r for r in RUNTIMES if not r.endswith("-go"))
    with pytest.raises(ConfigError, match="needs the Go peers: --peers DIR"):
        create_runtime("containerd-go", tmp_path / "w", None)
    with pytest.raises(ConfigError, match=r"needs .*/stargzstore"):
        create_runtime("podman-go", tmp_path / "w", tmp_path)
    assert available_runtimes(_peers(tmp_path)) == RUNTIMES


def test_an_unknown_runtime_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown runtime 'containerd-fast'"):
        create_runtime("containerd-fast", tmp_path, None)
