"""The lazy FUSE filesystem: one mount per process, a directory per layer.

    from stargz.fs.mount import LazyFS           # needs pyfuse3 (the "fuse" extra)
    fs = LazyFS("/run/stargz/mnt", metrics_address="127.0.0.1:9100")
    task = asyncio.create_task(fs.serve())       # on the caller's event loop
    lowerdir = fs.add_layer(layer)               # <mnt>/<layer digest>, any time

``layer`` is anything shaped like :class:`LayerView` (``stargz.layer.Layer`` is).
Overlayfs needs ``:`` in a lowerdir path escaped as ``\\:`` (digests contain one).
The package itself imports no FUSE binding: the core (``tree``) is usable without one.
"""

from stargz.fs.tree import FSCore
from stargz.fs.view import BlobLayerView, LayerStatsView, LayerView

__all__ = ["BlobLayerView", "FSCore", "LayerStatsView", "LayerView"]
