"""One lazily pulled layer: verified reader, chunk caches, prefetch and background fetch."""

from stargz.layer.layer import Layer, mount
from stargz.layer.scheduler import BackgroundScheduler
from stargz.layer.sources import mount_from_file, mount_from_registry
from stargz.layer.stats import LayerStats

__all__ = ["BackgroundScheduler", "Layer", "LayerStats", "mount", "mount_from_file",
           "mount_from_registry"]
