#!/usr/bin/env bash
# The test suite, exactly as the README tells a person to run it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace
