"""``stargz store``: podman's, CRI-O's and buildah's additional layer store over FUSE, a front end
on the same layer service as the snapshotter and ``stargz mount`` (see core.py for the layout).
"""
