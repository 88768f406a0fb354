#!/usr/bin/env bash
# The benchmark, quick form: the fast policy, NextFit and memcpy in one
# process run (docs/PERFORMANCE.md explains every row). It asserts no
# timing: numbers on shared machines move; it fails only if the command
# itself fails.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --release -p swiotlb-cli -- bench --quick "$@"
