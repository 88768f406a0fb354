#!/usr/bin/env bash
# Loom models of concurrent map, sync and unmap (crates/swiotlb/tests/loom.rs).
#
# `--cfg swiotlb_loom` swaps the core's locks and atomics for loom's
# (src/sync.rs). It changes RUSTFLAGS, so it builds in its own target
# directory rather than invalidating the normal one. Release: loom runs the
# model thousands of times. The models bound preemptions (3 by default);
# set LOOM_MAX_PREEMPTIONS for a deeper run.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="${RUSTFLAGS:-} --cfg swiotlb_loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test -p swiotlb --release --test loom -- --nocapture
