"""Entry names that try to drive the terminal: `stargz blob ls` and `blob toc` must not pass
their control characters through raw (issue 16, point 7), yet every name stays recognisable."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from stargz.printable import printable, printable_json, quote_name
from tests.unit.test_cli_blob import run_process

HOSTILE = {  # the name's raw part -> how `blob ls` must show it
    "red\x1b[31mtext": "red\\x1b[31mtext",
    "two\nlines": "two\\nlines",
    "back\roverwrite": "back\\roverwrite",
    "csi\x9b2J": "csi\\x9b2J",
    "rlo\u202etxt.exe": "rlo\\u202etxt.exe",
    "del\x7fete": "del\\x7fete",
    "slash\\x1b": "slash\\\\x1b",  # a literal backslash: never mistaken for the escaped ESC
}
LINK_TARGET = "target\x1b]0;owned\x07"


def hostile_tar(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in HOSTILE:
            data = f"content of {name}".encode()
            info = tarfile.TarInfo(f"dir/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dir/link")
        link.type, link.linkname = tarfile.SYMTYPE, LINK_TARGET
        tar.addfile(link)
    return path


def control_bytes(data: bytes) -> list[int]:
    """Characters a terminal acts on: C0 but newline and tab, DEL, C1, bidi controls."""
    text = data.decode("utf-8", "surrogateescape")
    return [ord(c) for c in text if c not in "\n\t" and not c.isprintable()]


@pytest.fixture(name="blob")
def blob_fixture(tmp_path: Path) -> Path:
    out = tmp_path / "hostile.estargz"
    done = run_process("blob", "build", hostile_tar(tmp_path / "hostile.tar"), out)
    assert done.returncode == 0, done.stderr
    return out


def test_ls_escapes_control_characters_and_keeps_names_apart(blob: Path) -> None:
    done = run_process("blob", "ls", blob)
    assert done.returncode == 0, done.stderr
    assert control_bytes(done.stdout) == []
    lines = [line for line in done.stdout.decode().splitlines() if "landmark" not in line]
    assert len(lines) == 1 + len(HOSTILE) + 1  # dir/, each file, the link: no split lines
    shown = {re.match(r"\S+ +\S+ \d{4} (.*)", line).group(1) for line in lines}  # type: ignore[union-attr]
    for escaped in HOSTILE.values():
        assert f"dir/{escaped}" in shown
    link_line = next(line for line in lines if line.startswith("symlink"))
    assert link_line.endswith("dir/link -> target\\x1b]0;owned\\x07")


def test_toc_is_byte_exact_through_a_pipe_and_escaped_on_a_terminal(blob: Path) -> None:
    piped = run_process("blob", "toc", blob).stdout
    assert "\u202e".encode() in piped  # as stored: the digest of these bytes is the TOC's
    main, child = pty.openpty()
    try:
        with subprocess.Popen([sys.executable, "-m", "stargz.cli.main", "blob", "toc",
                               str(blob)], stdout=child) as proc:
            os.close(child)
            shown = _read_all(main)
            assert proc.wait(timeout=60) == 0
    finally:
        os.close(main)
    text = shown.replace(b"\r\n", b"\n")  # the terminal's own line discipline
    assert control_bytes(text) == []
    assert json.loads(text) == json.loads(piped)  # the same document, only escaped


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_helpers_escape_every_kind_of_control_character() -> None:
    assert printable("plain name.txt") == "plain name.txt"
    assert printable("a\x00\x1b\t\n\r\x7f\x85\x9b\u2028\u202e\U000e0001") == (
        "a\\x00\\x1b\\t\\n\\r\\x7f\\x85\\x9b\\u2028\\u202e\\U000e0001")
    assert printable("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"  # letters stay
    assert printable("bad\udcff") == "bad\\udcff"  # a lone surrogate from undecodable bytes
    assert quote_name("a\\x1b") != quote_name("a\x1b")
    wide = '{"name": "\U000e0001 \x9b"}'
    assert printable_json(wide) == '{"name": "\\udb40\\udc01 \\u009b"}'
    assert json.loads(printable_json(wide)) == json.loads(wide)


def test_error_lines_and_log_lines_carry_no_raw_control_characters(tmp_path: Path) -> None:
    missing = tmp_path / "no\x1b[2Jsuch\rblob"
    done = run_process("blob", "ls", missing)
    assert done.returncode == 1
    assert control_bytes(done.stderr) == [] and done.stderr.count(b"\n") == 1, done.stderr
    assert b"no\\x1b[2Jsuch blob" in done.stderr  # whitespace folded: one line
    logged = subprocess.run(
        [sys.executable, "-c", "import logging, sys\nfrom stargz import logs\n"
         "logs.configure('info')\nlogging.getLogger('stargz.layer').error("
         "'layer %s: read of %s failed', 'sha256:ab', sys.argv[1])", "evil\x1b[31m\n\r\x9b\u202e"],
        capture_output=True, check=True)
    assert control_bytes(logged.stderr) == [] and logged.stderr.count(b"\n") == 1
    assert logged.stderr.endswith(b"read of evil\\x1b[31m\\n\\r\\x9b\\u202e failed\n")
