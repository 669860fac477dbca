"""Generated gRPC client stubs for containerd's content, images, leases, diff and namespaces
services (scripts/gen-protos; do not edit)."""
