#!/usr/bin/env bash
# The test suite, exactly as the README tells a person to run it.
#
# The device tests (swiotlb-vhost, the demo's) drive a real
# qemu-storage-daemon, from Debian's qemu-utils. It is installed here when
# missing; if that cannot be done this says so, and the tests that need the
# daemon then fail loudly: they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    echo "ci/test.sh: qemu-storage-daemon missing: installing qemu-utils"
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    fi
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq qemu-utils; }; then
        echo "ci/test.sh: could not install qemu-utils: the device tests will fail" >&2
    fi
fi
if command -v qemu-storage-daemon >/dev/null 2>&1; then
    qemu-storage-daemon --version | head -n 1
fi

cargo test --workspace
# The misuse checker's tests need its feature, which no crate of the
# workspace turns on. (With it, `cargo test -p swiotlb --all-features`,
# the crate's other tests check the findings of their deliberate misuse
# too.)
cargo test -p swiotlb --features checker --test checker
# The simulator under the checker: its raw calls are checked too (a few
# seconds).
cargo test -p swiotlb --features sim,checker --lib
