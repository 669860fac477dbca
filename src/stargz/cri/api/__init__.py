"""Generated stubs for Kubernetes' CRI runtime.v1 (scripts/gen-protos from proto/cri; do not
edit)."""
