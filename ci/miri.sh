#!/usr/bin/env bash
# Miri over the core's unit tests and a named subset of its integration
# tests, and over swiotlb-virtio's tests, with strict provenance, to catch undefined behaviour in the unsafe
# code (slot copies, raw originals, the pool's own allocation); the safe
# API's buffer types again under Tree Borrows; the release-versus-shrink
# race across many scheduling seeds (MIRI_SEEDS, default 32); and the host
# crate's heap provider under both borrow models (its memfd, mmap and
# sched_getcpu tests are ignored under miri, which cannot run them).
#
# The core's heap-backed integration tests get their memory from
# `swiotlb_host::HeapProvider`, so they run the host crate's heap module
# under miri too.
#
# Miri needs nightly with the miri and rust-src components. Where they cannot
# be installed (no network, no nightly) this prints "miri skipped: <reason>"
# and exits 0: that is a machine problem, not a finding. UB or a failing test
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

# Integration tests run under miri (names of crates/swiotlb/tests/*.rs).
# Miri is ~100x slower than native: list targets whose cases are few or
# small. A listed target that does not exist (yet) is skipped with a note.
TESTS=(smoke data oracle nextfit_golden provider xen dynamic ownership guards edges heapless exhaustion stale)

# Tests left out, by exact name: long fixed-seed or exhaustive runs of
# plain arithmetic (no unsafe code to check), each minutes under miri. The
# native run (ci/test.sh) still runs them. Names are unique across targets.
SKIP=(
    pool::bitmap::tests::scans_match_naive          # lib: 33k scans
    config::tests::round_trip                       # lib: parser only
    # lib: 20,000 randomised steps each of word arithmetic checked against
    # a naive model; `Fast` has no unsafe code, and the pool's unsafe paths
    # run under miri through the integration tests.
    pool::fast::tests::summaries_stay_exact_after_frees_with_exact_reuse
    pool::fast::tests::word_search_matches_run_search
    cve_2023_52790_small_pool_fast                  # oracle
    cve_2023_52790_small_pool_nextfit               # oracle
    random_sequences_match_the_reference_model      # nextfit_golden: 30k ops
    # dynamic: 1,000 queued requests, about a minute each under miri; the
    # small deferred_requests_complete_in_order walks the same unsafe paths.
    a_thousand_deferred_requests_complete_in_fifo_order
    cancelled_deferred_requests_are_never_lost_nor_completed_twice
    # dynamic: a real-time wait for a background thread; no unsafe code of
    # its own.
    the_maintainer_grows_for_callers_that_could_not
    # edges: asks the allocator for 32 TiB, which miri grants (it reserves
    # address space lazily) where a real machine refuses; what it checks
    # is the error's kind, not unsafe code.
    a_pool_too_large_for_the_machine_is_out_of_memory_not_too_small
)

# Proptest: enough cases to walk the unsafe paths, few enough for miri
# (a test that sets its own `cases` ignores this). Its regression files
# need the file system, which miri's isolation forbids.
export PROPTEST_CASES="${PROPTEST_CASES:-4}"
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1
# Strict provenance: an integer-to-pointer cast is an error, not a guess.
# Isolation hides the environment from the program; pass proptest's
# settings through. (cargo-miri records them when it builds a test, so a
# changed PROPTEST_CASES needs a rebuild to take effect.)
MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}"
MIRIFLAGS+=" -Zmiri-env-forward=PROPTEST_CASES"
MIRIFLAGS+=" -Zmiri-env-forward=PROPTEST_DISABLE_FAILURE_PERSISTENCE"
export MIRIFLAGS

skip() {
    echo "miri skipped: $*"
    exit 0
}

command -v rustup >/dev/null || skip "rustup not found"
toolchains=$(rustup toolchain list)
if ! grep -q '^nightly' <<<"$toolchains"; then
    timeout 600 rustup toolchain install nightly --profile minimal \
        --component miri,rust-src ||
        skip "cannot install the nightly toolchain"
fi
if ! timeout 600 rustup component add --toolchain nightly miri rust-src; then
    # Already there from an earlier run is as good as freshly added.
    cargo +nightly miri --version >/dev/null 2>&1 ||
        skip "cannot add the miri and rust-src components to nightly"
    echo "miri: 'rustup component add' failed; using the installed miri"
fi
# Builds miri's own sysroot once (cached under ~/.cache/miri).
cargo +nightly miri setup || skip "'cargo miri setup' failed"

args=(-p swiotlb --features sim --lib)
for t in "${TESTS[@]}"; do
    if [[ -f crates/swiotlb/tests/$t.rs || -f crates/swiotlb/tests/$t/main.rs ]]; then
        args+=(--test "$t")
    else
        echo "miri: no test target '$t', skipped"
    fi
done
harness=(--exact)
for s in "${SKIP[@]}"; do
    harness+=(--skip "$s")
done

echo "miri: MIRIFLAGS=$MIRIFLAGS PROPTEST_CASES=$PROPTEST_CASES"
# Miri interprets on one core. The core crate's big Stacked Borrows run
# goes on in the background, in the default target directory, while the
# other runs below take the second core in a target directory of their
# own (cargo locks a target directory for a whole `cargo test`); its
# output is printed when both are done. Every run goes on after a
# failure, so one run of this script reports all findings.
status=0
core_log=$(mktemp)
core_status=$(mktemp)
trap 'rm -f "$core_log" "$core_status"' EXIT
(
    if cargo +nightly miri test --no-fail-fast "${args[@]}" -- "${harness[@]}"; then
        echo 0 >"$core_status"
    else
        echo 1 >"$core_status"
    fi
) >"$core_log" 2>&1 &
core_pid=$!
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/miri-rest"

# The safe API with every `DmaBuffer` implementation under Tree Borrows
# too: the two models disagree on what a moved `Box` or `&mut` does to
# pointers derived from it before the move (tests/ownership.rs). The
# heapless pool too: its metadata arrays are carved from a `&'static mut`
# given up, and its slots reached through a static (tests/heapless.rs).
# The zeroing of freed slots, and the coherent and grown pools the test
# reaches through raw pointers (tests/stale.rs, about a minute).
echo "miri: Tree Borrows over the safe API's buffer types, the heapless pool and zero on free"
MIRIFLAGS="$MIRIFLAGS -Zmiri-tree-borrows" \
    cargo +nightly miri test -p swiotlb --test ownership --test heapless --test stale || status=1

# The host crate's heap provider (allocation, alignment inside, free) and
# the rest of its unit tests miri can run, under both borrow models.
echo "miri: swiotlb-host's heap provider, Stacked and Tree Borrows"
cargo +nightly miri test -p swiotlb-host --lib || status=1
MIRIFLAGS="$MIRIFLAGS -Zmiri-tree-borrows" \
    cargo +nightly miri test -p swiotlb-host --lib || status=1

# The virtio Hal over heap pools: its tests, under both borrow models
# (its waits are short: 50 ms deadlines), and the real VirtIOBlk driven
# through it. virtio-drivers' own `Dma::vaddr` casts an integer to a
# pointer, which strict provenance refuses: tests/blk.rs runs with
# permissive provenance (the casts are virtio-drivers', not ours).
echo "miri: swiotlb-virtio"
cargo +nightly miri test -p swiotlb-virtio --lib --test hal || status=1
MIRIFLAGS="$MIRIFLAGS -Zmiri-tree-borrows" \
    cargo +nightly miri test -p swiotlb-virtio --lib --test hal || status=1
permissive="${MIRIFLAGS/-Zmiri-strict-provenance/-Zmiri-permissive-provenance}"
MIRIFLAGS="$permissive" cargo +nightly miri test -p swiotlb-virtio --test blk || status=1
MIRIFLAGS="$permissive -Zmiri-tree-borrows" \
    cargo +nightly miri test -p swiotlb-virtio --test blk || status=1

# The misuse checker: its guard bytes are read and written in slot memory
# and its checksums read originals through raw pointers, in pools, grown
# and transient pools of a tlb, and a platform's tlbs (about 70 s of run
# under Stacked Borrows, 150 s under Tree Borrows).
# Its own run: the targets above run as users build them, without it.
echo "miri: the misuse checker, Stacked and Tree Borrows"
cargo +nightly miri test -p swiotlb --features checker --test checker || status=1
MIRIFLAGS="$MIRIFLAGS -Zmiri-tree-borrows" \
    cargo +nightly miri test -p swiotlb --features checker --test checker || status=1

# Releases racing the shrink that frees their pool, across many scheduling
# seeds: with the default seed alone the race can hide (before the grace
# rule, seed 15 of 0..16 found the use after free).
echo "miri: release against shrink, seeds 0..${MIRI_SEEDS:-32}"
MIRIFLAGS="$MIRIFLAGS -Zmiri-many-seeds=0..${MIRI_SEEDS:-32}" \
    cargo +nightly miri test -p swiotlb --test release_shrink || status=1

echo "miri: waiting for the core crate's Stacked Borrows run"
wait "$core_pid" || true
echo "miri: the core crate under Stacked Borrows (lib with sim, ${TESTS[*]}):"
cat "$core_log"
[[ "$(cat "$core_status")" == 0 ]] || status=1
exit $status
