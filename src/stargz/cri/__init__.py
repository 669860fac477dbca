"""The CRI keychain: the snapshotter serves Kubernetes' CRI ImageService, forwards every call to
containerd's, and keeps the credentials of each PullImage for the lazy layers of its registry."""
