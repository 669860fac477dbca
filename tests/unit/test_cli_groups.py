"""The CLI imports only the named command's module, and its map of commands to modules matches
what each module registers (a drift would make `stargz CMD` fall back to importing them all)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from stargz.cli.main import GROUPS, build_parser


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


@pytest.mark.parametrize(("module", "commands"), GROUPS)
def test_each_command_gets_only_its_module(module: str, commands: tuple[str, ...]) -> None:
    for command in commands:
        assert _choices(build_parser([command, "--help"])) == set(commands)


def test_no_command_registers_them_all() -> None:
    every = {command for _, commands in GROUPS for command in commands}
    assert _choices(build_parser()) == every
    assert _choices(build_parser(["--log-level", "debug", "no-such"])) == every


def test_snapshotter_start_imports_no_other_command() -> None:
    code = ("import sys; from stargz.cli.main import build_parser; "
            "build_parser(['--log-level', 'info', 'snapshotter']); "
            "print(sorted(m for m in sys.modules if m.startswith('stargz.cli.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['stargz.cli.main', 'stargz.cli.snapshotter']"
