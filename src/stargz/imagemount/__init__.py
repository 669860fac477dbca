"""Mounting a whole image: its layers served lazily over FUSE, stacked by overlayfs.

``daemon.serve_image`` is what `stargz mount` runs; ``state`` finds and removes the mounts of
a mountpoint (also after a killed daemon); ``layers`` opens an image's layers.
"""

from pathlib import Path

DEFAULT_STATE_ROOT = Path("/run/stargz/mounts")  # here so the CLI can name it without pyfuse3
