"""containerd remote snapshotter (proxy plugin) with a hook for lazily mounted layers.

    daemon.py       ``stargz snapshotter``: main(argv), run(config, remote=None), the config
    service.py      the Snapshots gRPC service; errors -> gRPC status codes
    snapshotter.py  behaviour of containerd's overlayfs snapshotter + the remote handshake
    remote.py       RemoteLayers (the hook the lazy layer store implements), labels, NoRemoteLayers
    lazy.py         the lazy layers (lazyworker.py: LayerService + FUSE on a portal thread), or
    fusemanager.py  the same served by ``stargz fuse-manager``, outliving the snapshotter
    metastore.py    SQLite metadata; layout.py: directories and mounts; filters.py: List filters
    api/            generated stubs (scripts/gen-protos)
"""
