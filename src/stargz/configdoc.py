"""docs/CONFIG.md, generated from stargz.config (``python -m stargz.configdoc > docs/CONFIG.md``;
a unit test checks the file is current)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from stargz.config import IGNORED_KEYS, SECTIONS, MirrorConfig, default_of, toml_name

HEADER = """# Configuration: every key

One file (`stargz snapshotter --config`, `stargz mount --config`, the store's `--config`): the
reference's config.toml as written for containerd-stargz-grpc, with our keys beside it. A
reference key that means nothing here is accepted with one WARNING naming it and the file; an
unknown or misspelt key, or a wrong type, is an error naming the key and the file. The older
`[lazy]` table holds the top-level keys (and `[lazy.blob]` ... the tables). Generated from
`src/stargz/config.py` by `python -m stargz.configdoc`; a unit test checks it is current.

| key | default | reference's | here |
|---|---|---|---|
"""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[]" if not value else repr(list(value))
    return str(value)


def _rows(kind: type[Any], prefix: str) -> list[str]:
    rows = []
    for item in fields(kind):
        if is_dataclass(default_of(item)):
            continue  # a table: its own rows
        name = prefix + toml_name(item)
        alias = item.metadata.get("alias")
        doc = item.metadata["doc"] + (f" (also read as `{prefix}{alias}`)" if alias else "")
        ref = "yes" if item.metadata.get("ref") else "no (ours)"
        rows.append(f"| `{name}` | `{_value(default_of(item))}` | {ref} | {doc} |")
    return rows


def render() -> str:
    rows: list[str] = []
    for section, kinds in SECTIONS.items():
        for kind in kinds:
            rows.extend(_rows(kind, f"{section}." if section else ""))
    rows.extend(_rows(MirrorConfig, 'resolver.host."H".mirrors[].'))
    for name, (default, why) in IGNORED_KEYS.items():
        rows.append(f"| `{name}` | `{_value(default)}` | yes | ignored, with a warning: {why} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
