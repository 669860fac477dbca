"""A small client for containerd's gRPC API: what `stargz rpull` needs to pull an image lazily."""
