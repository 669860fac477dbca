"""Generated gRPC stubs for containerd's Snapshots service (scripts/gen-protos; do not edit)."""
