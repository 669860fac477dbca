"""`stargz optimize`: run an image's workload, record the files it opens, convert with them first.

``fanotify`` records which files a process tree opens on a mounted root filesystem;
``sandbox`` runs the workload with runc; ``layerfiles`` maps the opened paths to the layers
that provide them; ``optimizer`` mounts the image (``stargz.imagemount``), runs and records,
and converts through ``stargz.convert``.
"""
