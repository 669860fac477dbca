"""Never silent: a layer the snapshotter could not mount lazily (so containerd downloads it in
full) is said once at WARNING with its reason, counted in ``stargz_layer_fallbacks_total`` by
reason, and recorded in ``<root>/fallbacks.json`` under the name containerd commits it as, for
``stargz status``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from stargz import opmetrics
from stargz.errors import (
    AuthError,
    ConfigError,
    FormatError,
    RegistryError,
    StargzError,
    VerificationError,
)
from stargz.snapshotter.remote import (
    LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST,
    LABEL_SNAPSHOT_REF,
    LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_REFERENCE,
    LABEL_TOC_DIGEST,
)

log = logging.getLogger("stargz.snapshotter")

FALLBACKS_FILE = "fallbacks.json"
MAX_RECORDS = 4096  # the oldest go first: a node pulls many images over its life
# reasons (the metric's label values)
LAZY_DISABLED = "lazy_disabled"
NO_TOC_DIGEST = "no_toc_digest"  # not eStargz, or converted without a TOC digest annotation
DECLINED = "declined"
BAD_DIRECTORY = "bad_directory"
_ERROR_REASONS: tuple[tuple[type[StargzError], str], ...] = (
    (AuthError, "auth"),
    (VerificationError, "verification"),
    (FormatError, "format"),
    (RegistryError, "registry"),
    (ConfigError, "config"),
)


@dataclass(frozen=True)
class Fallback:
    """Why the layer committed as ``snapshot`` was downloaded in full."""

    snapshot: str
    image: str
    layer: str
    reason: str
    detail: str
    time: float


def reason_of_error(err: BaseException) -> str:
    for kind, reason in _ERROR_REASONS:
        if isinstance(err, kind):
            return reason
    return "error"


_DECLINED_WHY = {
    LAZY_DISABLED: "lazy layers are disabled in the config",
    NO_TOC_DIGEST: "no TOC digest annotation (not eStargz, or converted without one): the "
                   "layer can not be verified",
    DECLINED: "the lazy layers declined it",
}


class FallbackLog:
    """The snapshotter's record of its fallbacks (one per daemon root)."""

    def __init__(self, root: Path) -> None:
        self.path = root / FALLBACKS_FILE
        self._lock = threading.Lock()
        self._said: set[str] = set()  # layers already warned about by this process
        self._records = load_fallbacks(self.path)

    def declined(self, labels: Mapping[str, str], lazy: bool) -> None:
        """The lazy layers answered None (or there are none: ``lazy`` False)."""
        reason = DECLINED if labels.get(LABEL_TOC_DIGEST) else NO_TOC_DIGEST
        reason = reason if lazy else LAZY_DISABLED
        self.record(labels, reason, _DECLINED_WHY[reason])

    def record(self, labels: Mapping[str, str], reason: str, detail: str) -> None:
        """One layer's fallback: WARNING (once a layer), the metric, the status file."""
        entry = Fallback(
            snapshot=labels.get(LABEL_SNAPSHOT_REF, ""),
            image=labels.get(LABEL_STARGZ_REFERENCE) or labels.get(LABEL_CRI_IMAGE_REF) or "",
            layer=labels.get(LABEL_STARGZ_DIGEST) or labels.get(LABEL_CRI_LAYER_DIGEST) or "",
            reason=reason, detail=" ".join(detail.split()), time=time.time())
        opmetrics.count_fallback(reason)
        with self._lock:
            first = entry.layer not in self._said
            self._said.add(entry.layer)
            self._records.pop(entry.snapshot, None)  # the newest last: kept longest
            self._records[entry.snapshot] = entry
            while len(self._records) > MAX_RECORDS:
                del self._records[next(iter(self._records))]
            records = list(self._records.values())
        log_at = logging.WARNING if first else logging.DEBUG
        log.log(log_at, "layer %s of %s is downloaded in full, not lazily (%s): %s",
                entry.layer, entry.image, reason, entry.detail)
        try:
            _save(self.path, records)
        except OSError as err:  # the status file is a report: the pull goes on without it
            log.warning("can not write %s: %s", self.path, err.strerror)


def load_fallbacks(path: Path) -> dict[str, Fallback]:
    """The records of ``path`` by snapshot name (an unreadable file: none)."""
    try:
        data = json.loads(path.read_text())
        records = [Fallback(**item) for item in data]
    except (OSError, ValueError, TypeError):
        return {}
    return {record.snapshot: record for record in records}


def _save(path: Path, records: list[Fallback]) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump([asdict(r) for r in records], out)
    os.replace(staged, path)
