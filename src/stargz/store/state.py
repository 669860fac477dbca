"""The layers podman holds, kept on disk so that a restarted store serves them again.

One JSON file under the store's root, replaced atomically (written beside, renamed) whenever a
use count changes: ``{"version": 1, "layers": [{"ref", "uses", "layer": {...}}]}``. Not fsynced:
podman waits for each count, and a store that crashes loses nothing (the page cache keeps the
file); a power cut may lose the last counts, which only keeps unused layers until a restart.
A file that can not be read is set aside (``.broken``) with an error line: podman's layers then
resolve again on lookup, only their use counts are lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stargz.errors import StargzError
from stargz.store.images import LayerInfo

log = logging.getLogger(__name__)

STATE_FILE = "layers.json"
VERSION = 1


@dataclass(frozen=True)
class HeldLayer:
    ref: str  # the image reference as podman gave it
    info: LayerInfo
    uses: int


class StateFile:
    def __init__(self, root: Path) -> None:
        self.path = root / STATE_FILE

    def load(self) -> list[HeldLayer]:
        try:
            data = json.loads(self.path.read_bytes())
            return [HeldLayer(str(item["ref"]), LayerInfo.from_dict(item["layer"]),
                              int(item["uses"]))
                    for item in data["layers"] if int(item["uses"]) > 0]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, StargzError) as err:
            broken = self.path.with_name(self.path.name + ".broken")
            os.replace(self.path, broken)
            log.error("can not read the store's state %s (%s); moved it to %s: layers podman "
                      "holds resolve again when looked up", self.path, type(err).__name__,
                      broken)
            return []

    def save(self, held: Iterable[HeldLayer]) -> None:
        doc = {"version": VERSION,
               "layers": [{"ref": h.ref, "uses": h.uses, "layer": h.info.to_dict()}
                          for h in held if h.uses > 0]}
        staging = self.path.with_name(self.path.name + ".tmp")
        with open(staging, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1)
        os.replace(staging, self.path)
