"""A bare `pip install` (no extras) into a fresh virtual environment gives a CLI without a
traceback: every command's help works, and a command that needs FUSE says in one line which
extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stargz.cli.main import GROUPS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# every command the CLI has, so a new one is checked without editing this list
COMMANDS = tuple(command for _, commands in GROUPS for command in commands)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(REPO)], check=True,
                   capture_output=True, timeout=300)
    return venv


def _stargz(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "stargz"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_bare_install_has_no_fuse_but_grpc(bare_venv: Path) -> None:
    probe = "import importlib.util as u; print(bool(u.find_spec('pyfuse3')), " \
            "bool(u.find_spec('grpc')))"
    done = subprocess.run([str(bare_venv / "bin" / "python"), "-c", probe],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("command", ("--help", *COMMANDS))
def test_every_help_works_without_extras(bare_venv: Path, command: str) -> None:
    args = (command,) if command == "--help" else (command, "--help")
    done = _stargz(bare_venv, *args)
    assert done.returncode == 0, done.stderr
    assert "usage: stargz" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", (("mount", "localhost:1/x:y", "/tmp/nowhere"),
                                  ("umount", "/tmp/nowhere"), ("store", "/tmp/nowhere")))
def test_fuse_command_names_the_extra(bare_venv: Path, args: tuple[str, ...]) -> None:
    done = _stargz(bare_venv, *args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "stargz[fuse]" in lines[0] and "pyfuse3" in lines[0]
