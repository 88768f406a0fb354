#!/usr/bin/env bash
# Formatting and clippy over every crate and every target (tests, examples,
# benches, fuzz targets), warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."

# A minimal toolchain profile ships without these; add them rather than
# fail on a machine that merely lacks them.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets, a workspace of their own (fuzz/Cargo.toml): checked
# with the stable toolchain like the rest; only running them needs nightly
# (ci/fuzz.sh).
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
# The core without its default features: code only the heap-backed parts
# use must be compiled out with them, not left dead.
cargo clippy -p swiotlb --no-default-features -- -D warnings
cargo clippy -p swiotlb --no-default-features --features alloc -- -D warnings
cargo clippy -p swiotlb --no-default-features --features serde -- -D warnings
cargo clippy -p swiotlb --no-default-features --features alloc,serde -- -D warnings
# The misuse checker, with its tests, and without std.
cargo clippy -p swiotlb --features checker --all-targets -- -D warnings
cargo clippy -p swiotlb --no-default-features --features checker -- -D warnings
# The virtio Hal without std (its `std` feature only turns waiting on).
cargo clippy -p swiotlb-virtio --no-default-features -- -D warnings
