#!/usr/bin/env bash
# The core without std: with no features (address types, device, grammar,
# error, and pools over caller-provided metadata with the raw API), with
# `alloc` (heap pools, tlbs, growing pools), and for a real target that has
# no std at all, so a stray `std::` use cannot hide behind the host's std.
# `swiotlb-nostd` is a firmware-style user of the heapless pool: statics
# sized at compile time, no allocator; building it for that target proves
# the heapless pool needs neither std nor alloc. `swiotlb-virtio` without
# its `std` feature is virtio-drivers' Hal for a kernel with a heap.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p swiotlb --no-default-features
cargo build -p swiotlb --no-default-features --features alloc
# `serde` derives without std, with and without a heap.
cargo build -p swiotlb --no-default-features --features serde
cargo build -p swiotlb --no-default-features --features alloc,serde
# The misuse checker needs a heap, not std.
cargo build -p swiotlb --no-default-features --features checker
# Alone, so that no other package turns the core's features on.
cargo build -p swiotlb-nostd
# The virtio Hal without std: no waiting for slots, otherwise whole.
cargo build -p swiotlb-virtio --no-default-features

target=x86_64-unknown-none
installed=$(rustup target list --installed 2>/dev/null || true)
if ! grep -qx "$target" <<<"$installed"; then
    # The target's core/alloc come from the network; without it the host
    # builds above still ran.
    if ! timeout 300 rustup target add "$target"; then
        echo "nostd: $target skipped: 'rustup target add $target' failed"
        exit 0
    fi
fi
cargo build -p swiotlb --no-default-features --target "$target"
cargo build -p swiotlb --no-default-features --features alloc --target "$target"
cargo build -p swiotlb --no-default-features --features alloc,serde --target "$target"
cargo build -p swiotlb --no-default-features --features checker --target "$target"
cargo build -p swiotlb-nostd --target "$target"
cargo build -p swiotlb-virtio --no-default-features --target "$target"
