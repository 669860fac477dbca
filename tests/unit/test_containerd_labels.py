"""Label arithmetic of rpull: chain ids, GC references, remote-snapshot labels."""

from __future__ import annotations

from stargz.containerd import labels as lbl
from stargz.snapshotter.remote import (
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_LAYERS,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
    wants_remote,
)

A = "sha256:" + "1" * 64
B = "sha256:" + "2" * 64
# printf '%s %s' A B | sha256sum
CHAIN_AB = "sha256:9932074217c35353d2e03a3f5a86549f7c67bfeb0ba53e23d69f4d4c8f7958f5"


def test_chain_ids_follow_the_oci_definition() -> None:
    assert lbl.chain_ids([]) == []
    assert lbl.chain_ids([A]) == [A]
    assert lbl.chain_ids([A, B]) == [A, CHAIN_AB]
    assert lbl.chain_ids([B, A])[1] != CHAIN_AB  # order matters


def test_manifest_and_index_gc_labels() -> None:
    assert lbl.manifest_gc_labels("sha256:c", [A, B]) == {
        "containerd.io/gc.ref.content.config": "sha256:c",
        "containerd.io/gc.ref.content.l.0": A,
        "containerd.io/gc.ref.content.l.1": B,
    }
    assert lbl.index_gc_label(3, A) == {"containerd.io/gc.ref.content.m.3": A}
    assert lbl.snapshot_gc_label("stargz", B) == {"containerd.io/gc.ref.snapshot.stargz": B}


def test_layers_label_keeps_order_and_fits_containerds_limit() -> None:
    digests = [f"sha256:{i:064x}" for i in range(100)]  # 71 bytes each: far over 4096
    value = lbl.layers_label_value(digests)
    assert len(LABEL_STARGZ_LAYERS) + len(value) <= lbl.MAX_LABEL_SIZE
    kept = value.split(",")
    assert kept == digests[: len(kept)] and 50 < len(kept) < 100
    assert lbl.layers_label_value([A, B]) == f"{A},{B}"
    assert lbl.layers_label_value([]) == ""


def test_remote_labels_ask_the_snapshotter_for_the_layer() -> None:
    labels = lbl.remote_labels("reg/img:v1", CHAIN_AB, B, [B], "sha256:toc")
    assert labels == {
        LABEL_SNAPSHOT_REF: CHAIN_AB,
        LABEL_STARGZ_REFERENCE: "reg/img:v1",
        LABEL_STARGZ_DIGEST: B,
        LABEL_STARGZ_LAYERS: B,
        LABEL_TOC_DIGEST: "sha256:toc",
    }
    assert wants_remote(labels)
    without_toc = lbl.remote_labels("reg/img:v1", A, A, [A, B], None)
    assert LABEL_TOC_DIGEST not in without_toc
    assert without_toc[LABEL_STARGZ_LAYERS] == f"{A},{B}"
