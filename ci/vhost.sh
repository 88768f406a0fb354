#!/usr/bin/env bash
# The vhost-user transport against a real qemu-storage-daemon. The daemon
# is required: a missing one fails here (and in the tests) rather than
# skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    echo "ci/vhost.sh: qemu-storage-daemon not found: install the package qemu-utils" >&2
    exit 1
fi
qemu-storage-daemon --version | head -n 1
cargo test -p swiotlb-vhost
