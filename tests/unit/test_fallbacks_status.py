"""Never silent: a fallback is one WARNING a layer, a count by reason and a record that
`stargz status` reads beside the metadata; the status of lazy, full and writable snapshots."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from stargz import opmetrics
from stargz.cli.status import format_table, snapshot_statuses
from stargz.errors import AuthError, NotFoundError, TOCDigestMismatch
from stargz.fs.tree import STATE_DIR
from stargz.snapshotter import fallbacks
from stargz.snapshotter.fallbacks import FallbackLog, load_fallbacks, reason_of_error
from stargz.snapshotter.metastore import Kind, MetaStore, Usage
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_SNAPSHOT_REF,
    LABEL_TOC_DIGEST,
)
from stargz.snapshotter.snapshotter import METADATA_FILE

LAYER_A, LAYER_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _labels(target: str, layer: str, toc: bool = False) -> dict[str, str]:
    labels = {LABEL_SNAPSHOT_REF: target, LABEL_CRI_IMAGE_REF: "reg.example/app:v1",
              LABEL_CRI_LAYER_DIGEST: layer}
    return {**labels, LABEL_TOC_DIGEST: "sha256:" + "c" * 64} if toc else labels


def test_reasons_of_errors() -> None:
    assert reason_of_error(AuthError("401")) == "auth"
    assert reason_of_error(TOCDigestMismatch("x")) == "verification"
    assert reason_of_error(RuntimeError("x")) == "error"


def test_a_layer_warns_once_counts_each_time_and_is_recorded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = FallbackLog(tmp_path)
    before = opmetrics.fallback_counts()
    with caplog.at_level(logging.DEBUG, logger="stargz.snapshotter"):
        log.declined(_labels("chain-1", LAYER_A), lazy=True)
        log.declined(_labels("chain-1", LAYER_A), lazy=True)
        log.record(_labels("chain-2", LAYER_B, toc=True), "auth", "401 from\nreg.example")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"layer {LAYER_A} of reg.example/app:v1 is downloaded in "
                                  "full, not lazily (no_toc_digest): no TOC digest")
    assert warnings[1].endswith("(auth): 401 from reg.example")  # one line
    after = opmetrics.fallback_counts()
    assert after.get("no_toc_digest", 0) - before.get("no_toc_digest", 0) == 2
    assert after.get("auth", 0) - before.get("auth", 0) == 1
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    records = load_fallbacks(log.path)
    assert [(r.snapshot, r.layer, r.reason) for r in records.values()] == [
        ("chain-1", LAYER_A, "no_toc_digest"), ("chain-2", LAYER_B, "auth")]
    assert FallbackLog(tmp_path).path.exists()  # a restarted daemon keeps them


def test_records_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallbacks, "MAX_RECORDS", 2)
    log = FallbackLog(tmp_path)
    for i in range(3):
        log.declined(_labels(f"chain-{i}", LAYER_A), lazy=False)
    assert list(load_fallbacks(log.path)) == ["chain-1", "chain-2"]
    log.path.write_text("not json")
    assert load_fallbacks(log.path) == {}


def test_status_of_lazy_full_and_writable_snapshots(tmp_path: Path) -> None:
    lazy_dir = tmp_path / "fuse" / "layer-a"
    (lazy_dir / STATE_DIR).mkdir(parents=True)
    (lazy_dir / STATE_DIR / f"{LAYER_A}.json").write_text(json.dumps(
        {"digest": LAYER_A, "size": 1000, "fetchedSize": 250, "fetchedPercent": 25.0,
         "prefetchComplete": True}))
    store = MetaStore(tmp_path / METADATA_FILE)
    with store.transaction(write=True) as tx:
        tx.create(Kind.ACTIVE, "k-lazy", "", {})
        tx.commit_active("k-lazy", "chain-a", Usage(), _labels("chain-a", LAYER_A, toc=True),
                         remote_dir=str(lazy_dir))
        tx.create(Kind.ACTIVE, "k-full", "chain-a", {})
        tx.commit_active("k-full", "k8s.io/3/chain-b", Usage(), _labels("chain-b", LAYER_B))
        tx.create(Kind.ACTIVE, "container", "k8s.io/3/chain-b", {})
    store.close()
    FallbackLog(tmp_path).declined(_labels("chain-b", LAYER_B), lazy=True)

    rows = {row.snapshot: row for row in snapshot_statuses(tmp_path)}
    lazy, full, writable = rows["chain-a"], rows["k8s.io/3/chain-b"], rows["container"]
    assert (lazy.mode, lazy.layer, lazy.fetched_bytes, lazy.size_bytes, lazy.prefetch_done) == (
        "lazy", LAYER_A, 250, 1000, True)
    assert (full.mode, full.layer, full.reason) == ("full", LAYER_B, "no_toc_digest")
    assert (writable.mode, writable.kind) == ("-", "active")
    table = {line.split()[0]: line for line in format_table(list(rows.values())).splitlines()}
    assert "250/1000 (25.0%)" in table["chain-a"] and "done" in table["chain-a"]
    assert table["k8s.io/3/chain-b"].split()[-1] == "no_toc_digest"
    assert table["container"].split()[1:3] == ["active", "-"]


def test_status_without_a_daemon_root_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no snapshotter state"):
        snapshot_statuses(tmp_path)
