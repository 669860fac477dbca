"""Workload records: the files a workload read, in order, to put first in its layers.

The reference's format (``ctr-remote images optimize --record-out``, read by ``ctr-remote images
convert --estargz-record-in``): one JSON object a line,
``{"path":"usr/bin/python3.11","manifestDigest":"sha256:…","layerIndex":0}``. Plain files of
one path a line (``--prioritize-file``) are read too. Paths are kept in first-seen order, each
once, as the reference does; ``manifestDigest`` and ``layerIndex`` say where the file was found
and are not needed to build the layers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import InvalidArgumentError


@dataclass(frozen=True)
class RecordEntry:
    path: str
    manifest_digest: str = ""
    layer_index: int | None = None

    def to_json(self) -> str:
        """One line of the reference's record file (empty fields left out, as its omitempty)."""
        doc: dict[str, object] = {"path": self.path}
        if self.manifest_digest:
            doc["manifestDigest"] = self.manifest_digest
        if self.layer_index is not None:
            doc["layerIndex"] = self.layer_index
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def read_record_paths(file: Path) -> tuple[str, ...]:
    """The paths of a record file: JSON records or one path a line, each path once."""
    return tuple(dict.fromkeys(entry.path for entry in read_record_entries(file)))


def read_record_entries(file: Path) -> list[RecordEntry]:
    """A record file's entries as written: JSON records (with where each file was found), or
    one path a line (entries with the path only)."""
    try:
        text = file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise InvalidArgumentError(f"can not read record file {file}: {err.strerror}") from None
    if text.lstrip().startswith("{"):
        return _json_records(text, file)
    return [RecordEntry(line.rstrip("\r")) for line in text.split("\n") if line.rstrip("\r")]


def _json_records(text: str, file: Path) -> list[RecordEntry]:
    """A stream of JSON objects (one a line as written; any whitespace between, as Go reads)."""
    decoder = json.JSONDecoder()
    entries: list[RecordEntry] = []
    at = 0
    while (at := _skip_space(text, at)) < len(text):
        line = text.count("\n", 0, at) + 1  # where the record starts
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as err:
            raise InvalidArgumentError(
                f"record file {file}, line {line}: not a JSON record: {err.msg}") from None
        entries.append(_entry(doc, file, line))
    return entries


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _entry(doc: object, file: Path, line: int) -> RecordEntry:
    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str) or not doc["path"]:
        raise InvalidArgumentError(f"record file {file}, line {line}: a record needs a "
                                   '"path" string')
    index = doc.get("layerIndex")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise InvalidArgumentError(f"record file {file}, line {line}: layerIndex must be an "
                                   "integer")
    digest = doc.get("manifestDigest", "")
    return RecordEntry(doc["path"], digest if isinstance(digest, str) else "", index)


def write_records(file: Path, entries: Iterable[RecordEntry]) -> None:
    """Write ``entries`` in the reference's format (``stargz optimize --record-out``)."""
    with file.open("w", encoding="utf-8", errors="surrogateescape") as out:
        for entry in entries:
            out.write(entry.to_json() + "\n")
