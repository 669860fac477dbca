"""Workload records as ctr-remote writes them (JSON lines) and as plain path lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.convert.workload import RecordEntry, read_record_paths, write_records
from stargz.errors import InvalidArgumentError

# as `ctr-remote images optimize --record-out` writes them
REFERENCE_RECORDS = (
    '{"path":"usr/bin/python3.11","manifestDigest":"sha256:' + "a" * 64 + '","layerIndex":1}\n'
    '{"path":"etc/ld.so.cache","manifestDigest":"sha256:' + "a" * 64 + '","layerIndex":0}\n'
    '{"path":"usr/bin/python3.11","manifestDigest":"sha256:' + "a" * 64 + '","layerIndex":1}\n'
    '{"path":"lib/x86_64-linux-gnu/libc.so.6","layerIndex":0}\n'
)


def test_reference_records_give_paths_in_first_seen_order(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text(REFERENCE_RECORDS)
    assert read_record_paths(path) == (
        "usr/bin/python3.11", "etc/ld.so.cache", "lib/x86_64-linux-gnu/libc.so.6")


def test_plain_lines_still_read(tmp_path: Path) -> None:
    path = tmp_path / "paths.txt"
    path.write_text("bin/sh\r\n\netc/motd\nbin/sh\n")
    assert read_record_paths(path) == ("bin/sh", "etc/motd")


def test_written_records_are_the_references_format(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    entries = [RecordEntry("usr/bin/python3.11", "sha256:" + "a" * 64, 1),
               RecordEntry("etc/ld.so.cache", "sha256:" + "a" * 64, 0),
               RecordEntry("lib/x86_64-linux-gnu/libc.so.6", "", 0)]
    write_records(path, [*entries[:2], RecordEntry("usr/bin/python3.11", "sha256:" + "a" * 64, 1),
                         entries[2]])
    assert path.read_text() == REFERENCE_RECORDS
    assert read_record_paths(path) == tuple(entry.path for entry in entries)


@pytest.mark.parametrize(("text", "message"), [
    ('{"path":"a"}\n{"path":\n', "line 2: not a JSON record"),
    ('{"path":"a"}\n{"manifestDigest":"x"}\n', 'line 2: a record needs a "path"'),
    ('{"path":"a","layerIndex":"0"}\n', "layerIndex must be an integer"),
])
def test_a_bad_record_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        read_record_paths(path)
    assert str(path) in str(caught.value)


def test_a_missing_record_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="can not read record file"):
        read_record_paths(tmp_path / "absent.json")
