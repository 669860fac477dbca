"""`stargz blob ...` end to end on real small blobs: outputs, exit statuses, error lines."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from stargz.cli.main import main
from tests.support.images import reference_case_tar

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Run:
    """Run the real command in-process; returns (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors and --help
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_process(
    *argv: str | Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "stargz.cli.main", *map(str, argv)],
                          input=stdin, capture_output=True, check=False)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    return reference_case_tar(tmp_path / "layer.tar", "pax", "./")


def build(
    capsys: pytest.CaptureFixture[str], tar: Path, out: Path, *flags: str
) -> dict[str, Any]:
    code, stdout, stderr = run(capsys, "blob", "build", tar, out, *flags)
    assert (code, stderr) == (0, "")
    summary: dict[str, Any] = json.loads(stdout)
    return summary


def test_build_prints_digests_that_match_the_bytes(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    summary = build(capsys, layer, out, "--chunk-size", "64")
    blob = out.read_bytes()
    uncompressed = gzip.decompress(blob)  # an eStargz blob is an ordinary multi-member gzip
    assert set(summary) == {"toc_digest", "diff_id", "blob_digest", "blob_size",
                            "uncompressed_size"}
    assert summary["blob_digest"] == sha256(blob)
    assert summary["blob_size"] == len(blob)
    assert summary["diff_id"] == sha256(uncompressed)
    assert summary["uncompressed_size"] == len(uncompressed)
    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
        toc = tar.extractfile("stargz.index.json")
        assert toc is not None
        assert sha256(toc.read()) == summary["toc_digest"]


def test_build_zstd_chunked_then_verify(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.zst"
    summary = build(capsys, layer, out, "--zstd-chunked", "--chunk-size", "100", "--level", "3")
    blob = out.read_bytes()
    assert blob[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame, not gzip
    assert summary["blob_digest"] == sha256(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    payload = reader.read()  # skippable frames (TOC, footer) contribute nothing
    assert summary["diff_id"] == sha256(payload)
    code, stdout, stderr = run(capsys, "blob", "verify", out, "--toc-digest", summary["toc_digest"])
    assert (code, stderr) == (0, "")
    assert stdout.startswith(f"ok: TOC {summary['toc_digest']}")


def test_build_reads_stdin_and_writes_nothing_on_failure(layer: Path, tmp_path: Path) -> None:
    out = tmp_path / "from-stdin.esgz"
    done = run_process("blob", "build", "-", out, stdin=layer.read_bytes())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["blob_size"] == out.stat().st_size

    bad = run_process("blob", "build", "-", tmp_path / "bad.esgz", stdin=b"not a tar at all" * 64)
    assert bad.returncode == 1
    assert bad.stderr.decode().startswith("stargz: error: ")
    assert bad.stderr.count(b"\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["from-stdin.esgz", "layer.tar"]  # no partial output


def test_verify_accepts_the_right_digest_only(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    summary = build(capsys, layer, out, "--chunk-size", "16")
    good = run(capsys, "blob", "verify", out, "--toc-digest", summary["toc_digest"])
    assert good[0] == 0
    with tarfile.open(layer) as tar:
        files = sum(1 for m in tar if m.isfile() and m.size > 0)
    assert f", {files + 1} files, " in good[1]  # and the one-byte landmark file

    wrong = "sha256:" + "0" * 64
    code, stdout, stderr = run(capsys, "blob", "verify", out, "--toc-digest", wrong)
    assert (code, stdout) == (1, "")
    assert stderr.startswith("stargz: error: ") and stderr.count("\n") == 1
    assert wrong in stderr


def test_verify_catches_one_flipped_byte_in_a_chunk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tar = tmp_path / "one.tar"
    data = b"0123456789abcdef" * 4096  # compresses: a flipped byte lands in deflate data
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("file.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    out = tmp_path / "one.esgz"
    summary = build(capsys, tar, out, "--level", "0")  # stored blocks: the byte is file data
    blob = bytearray(out.read_bytes())
    at = blob.find(b"0123456789abcdef" * 8) + 37
    blob[at] ^= 0x01
    out.write_bytes(bytes(blob))
    code, stdout, stderr = run(capsys, "blob", "verify", out, "--toc-digest", summary["toc_digest"])
    assert (code, stdout) == (1, "")
    assert stderr.startswith("stargz: error: ") and stderr.count("\n") == 1


def test_ls_shows_every_kind_of_entry(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    summary = build(capsys, layer, out)
    code, stdout, stderr = run(capsys, "blob", "ls", out, "--toc-digest", summary["toc_digest"])
    assert (code, stderr) == (0, "")
    lines = [" ".join(line.split()) for line in stdout.splitlines()]
    for expected in (
        "reg 1 0000 .no.prefetch.landmark",
        "dir 0 0755 foo",
        "reg 105 0644 foo/bar.txt",
        "reg 0 0644 foo/empty",
        "symlink 0 0777 foo/sym -> bar.txt",
        "hardlink 0 0644 foo/hard -> foo/bar.txt",
        "char 1,3 0666 dev/char",
        "block 8,1 0660 dev/block",
        "fifo 0 0600 dev/fifo",
        "dir 0 1777 modes",
        "reg 10 4755 modes/setuid",
        "reg 15 2711 modes/setgid",
        "dir 0 0755 implied",  # never in the tar: implied by implied/deep/file.txt
        "dir 0 0755 implied/deep",
        "reg 1200 0644 big/random.bin",
    ):
        assert expected in lines
    assert len(lines) == len(set(lines)) == 20
    assert not any(line.endswith(("stargz.index.json", " .", " ")) for line in lines)


def test_toc_prints_the_stored_toc(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    summary = build(capsys, layer, out)
    done = run_process("blob", "toc", out)
    assert done.returncode == 0
    assert sha256(done.stdout) == summary["toc_digest"]
    toc = json.loads(done.stdout)
    assert toc["version"] == 1
    hard = next(e for e in toc["entries"] if e["name"] == "./foo/hard")  # names as in the tar
    assert (hard["type"], hard["linkName"]) == ("hardlink", "./foo/bar.txt")


def test_extract_writes_the_files(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    summary = build(capsys, layer, out, "--chunk-size", "7")
    dest = tmp_path / "root"
    code, _, stderr = run(capsys, "blob", "extract", out, dest, "--toc-digest",
                          summary["toc_digest"])
    assert (code, stderr) == (0, "")
    with tarfile.open(layer) as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                assert (dest / member.name).read_bytes() == f.read()
    assert os.readlink(dest / "foo/sym") == "bar.txt"
    assert os.stat(dest / "foo/hard").st_ino == os.stat(dest / "foo/bar.txt").st_ino


def test_extract_without_digest_warns(layer: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.esgz"
    assert run_process("blob", "build", layer, out).returncode == 0
    done = run_process("blob", "extract", out, tmp_path / "root")
    assert done.returncode == 0
    assert b"WARNING" in done.stderr and b"NOT verifying" in done.stderr
    assert (tmp_path / "root/foo/bar.txt").read_bytes() == b"test data of bar.txt\n" * 5


def test_prioritized_files_come_first(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    listed = tmp_path / "prio.txt"
    listed.write_text("big/random.bin\n\n")
    build(capsys, layer, out, "--prioritize", "modes/setgid", "--prioritize-file", str(listed))
    code, stdout, _ = run(capsys, "blob", "ls", out)
    assert code == 0
    names = [line.split()[3] for line in stdout.splitlines()]
    assert names.index("modes/setgid") < names.index("big/random.bin")
    assert names.index("big/random.bin") < names.index(".prefetch.landmark") < names.index("foo")
    assert ".no.prefetch.landmark" not in names


def test_missing_prioritized_file_is_an_error_unless_allowed(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "layer.esgz"
    code, stdout, stderr = run(capsys, "blob", "build", layer, out, "--prioritize", "no/such")
    assert (code, stdout) == (1, "")
    assert stderr.startswith("stargz: error: ") and "no/such" in stderr
    assert not out.exists()
    summary = build(capsys, layer, out, "--prioritize", "no/such", "--allow-missing-prioritized")
    assert summary["blob_size"] == out.stat().st_size


@pytest.mark.parametrize(
    "argv",
    [
        ["blob"],
        ["blob", "build", "only-one-arg"],
        ["blob", "verify", "x.esgz"],  # --toc-digest is required
        ["blob", "verify", "x.esgz", "--toc-digest", "md5:abc"],
        ["blob", "build", "in.tar", "out", "--chunk-size", "0"],
        ["blob", "build", "in.tar", "out", "--level", "high"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, stdout, stderr = run(capsys, *argv)
    assert (code, stdout) == (2, "")
    assert "error:" in stderr


def test_bad_inputs_give_one_line_and_status_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(4096))
    cases: list[list[str | Path]] = [
        ["blob", "ls", garbage],
        ["blob", "toc", tmp_path / "missing.esgz"],
        ["blob", "build", tmp_path / "missing.tar", tmp_path / "out"],
        ["blob", "build", garbage, tmp_path / "out"],
        ["blob", "verify", garbage, "--toc-digest", "sha256:" + "1" * 64],
    ]
    for argv in cases:
        code, stdout, stderr = run(capsys, *argv)
        assert (code, stdout) == (1, ""), argv
        assert stderr.startswith("stargz: error: ") and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\0" * 100)
    plain = run_process("blob", "ls", garbage)
    debug = run_process("--debug", "blob", "ls", garbage)
    assert plain.returncode == debug.returncode == 1
    assert b"Traceback" not in plain.stderr
    assert b"Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]


def test_help_lists_the_blob_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "blob", "--help")
    assert code == 0
    for command in ("build", "verify", "ls", "toc", "extract"):
        assert command in stdout


def test_min_chunk_size_packs_small_files_and_still_verifies(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "packed.esgz"
    summary = build(capsys, layer, out, "--min-chunk-size", "4096")
    code, _, stderr = run(capsys, "blob", "verify", out, "--toc-digest", summary["toc_digest"])
    assert (code, stderr) == (0, "")
    toc = json.loads(run_process("blob", "toc", out).stdout)
    assert any(e.get("innerOffset", 0) > 0 for e in toc["entries"])  # files share a member
    dest = tmp_path / "root"
    assert run(capsys, "blob", "extract", out, dest, "--toc-digest", summary["toc_digest"])[0] == 0
    assert (dest / "big/text.txt").read_bytes().startswith(b"line 0 of a text file")


def _tar_of(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def test_extract_never_writes_outside_the_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "a" / "b" / "root"
    escaping = _tar_of(
        tmp_path / "escaping.tar",
        (tarfile.TarInfo("../../escape"), b"cleaned to escape\n"),
        (tarfile.TarInfo("/abs/file"), b"cleaned to abs/file\n"),
        _symlink("to-outside", str(outside)),
        _symlink("relative-up", "../../../outside"),
    )
    blob = tmp_path / "escaping.esgz"
    summary = build(capsys, escaping, blob)
    code, _, stderr = run(capsys, "blob", "extract", blob, dest, "--toc-digest",
                          summary["toc_digest"])
    assert (code, stderr) == (0, "")
    assert (dest / "escape").read_bytes() == b"cleaned to escape\n"
    assert (dest / "abs/file").read_bytes() == b"cleaned to abs/file\n"
    assert os.readlink(dest / "to-outside") == str(outside)  # kept as a link, not followed
    assert sorted(os.listdir(tmp_path)) == ["a", "escaping.esgz", "escaping.tar", "outside"]
    assert os.listdir(outside) == []

    through_link = _tar_of(
        tmp_path / "through.tar",
        _symlink("link", str(outside)),
        (tarfile.TarInfo("link/pwned"), b"must not land outside\n"),
    )
    blob = tmp_path / "through.esgz"
    summary = build(capsys, through_link, blob)
    code, _, stderr = run(capsys, "blob", "extract", blob, tmp_path / "root2", "--toc-digest",
                          summary["toc_digest"])
    assert (code, stderr) == (0, "")
    # as containerd applies it: through the link resolved inside the root, never outside
    inside = tmp_path / "root2" / str(outside).lstrip("/") / "pwned"
    assert inside.read_bytes() == b"must not land outside\n"
    assert os.listdir(outside) == []


def test_gzip_and_zstd_compressed_inputs_give_the_same_blob(
    capsys: pytest.CaptureFixture[str], layer: Path, tmp_path: Path
) -> None:
    plain = build(capsys, layer, tmp_path / "plain.esgz")
    gz = tmp_path / "layer.tar.gz"
    gz.write_bytes(gzip.compress(layer.read_bytes()))
    zst = tmp_path / "layer.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(layer.read_bytes()))
    assert build(capsys, gz, tmp_path / "gz.esgz") == plain
    assert build(capsys, zst, tmp_path / "zst.esgz") == plain
