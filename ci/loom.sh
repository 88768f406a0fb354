#!/usr/bin/env bash
# Loom models of concurrent map, sync and unmap on a pool
# (crates/swiotlb/tests/loom.rs), and of a growing tlb's growth, shrinking
# and deferral racing with lookup, map and unmap
# (crates/swiotlb/tests/loom_dynamic.rs).
#
# `--cfg swiotlb_loom` swaps the core's locks and atomics for loom's
# (src/sync.rs). It changes RUSTFLAGS, so it builds in its own target
# directory rather than invalidating the normal one. Release: loom runs the
# model thousands of times. The models bound preemptions (3 in loom.rs; in
# loom_dynamic.rs none where the whole space takes seconds, else 3 to 5);
# set LOOM_MAX_PREEMPTIONS to override every bound for a deeper run.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="${RUSTFLAGS:-} --cfg swiotlb_loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test -p swiotlb --release --test loom --test loom_dynamic -- --nocapture
