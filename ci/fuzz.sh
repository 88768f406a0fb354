#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo-fuzz, libFuzzer), each for a bounded
# time from its seed corpus: the trace parsers in both formats, the
# swiotlb= and command-line parsers, the device-tree reader, API action
# sequences against a shadow of Linux's semantics, and the operations
# scripts of `swiotlb simulate` read and run (see docs/RELIABILITY.md,
# "Fuzzing").
#
#   ci/fuzz.sh                      all targets, 300 s in all
#   ci/fuzz.sh 120                  120 s per target
#   FUZZ_SECONDS_PER_TARGET=600 ci/fuzz.sh
#   ci/fuzz.sh --grow-corpus 600    fuzz in fuzz/corpus itself, keeping
#                                   what the run finds
#   FUZZ_TARGETS="dt cmdline" ci/fuzz.sh
#
# Each target runs in a temporary copy of its seed corpus, so that CI
# leaves fuzz/corpus as it was, unless --grow-corpus is given. Needs the
# nightly toolchain (installed here when missing), cargo-fuzz (installed
# with `cargo install cargo-fuzz --locked` when missing) and a C++
# compiler for libFuzzer. A crash, leak, timeout or out-of-memory of any
# target fails the script and names the input that caused it
# (fuzz/artifacts/<target>/); reproduce it with
# `cargo +nightly fuzz run <target> <that file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL_SECONDS=300
grow=0
per_target="${FUZZ_SECONDS_PER_TARGET:-}"
for arg in "$@"; do
    case "$arg" in
    --grow-corpus) grow=1 ;;
    '' | *[!0-9]*)
        echo "ci/fuzz.sh: unknown argument '$arg' (seconds per target, or --grow-corpus)" >&2
        exit 2
        ;;
    *) per_target="$arg" ;;
    esac
done

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=(trace_ftrace trace_dmesg swiotlb_param cmdline dt api_oracle script)
fi
if [[ -z "$per_target" ]]; then
    per_target=$((TOTAL_SECONDS / ${#targets[@]}))
fi
# libFuzzer's memory limit per process; its inputs are small and each run
# builds pools of at most 2 MiB, so more than this is a leak.
RSS_LIMIT_MB=2048
# Seconds one input may take before it counts as a hang.
UNIT_TIMEOUT=10

die() {
    echo "ci/fuzz.sh: $*" >&2
    exit 1
}

# The toolchain: libFuzzer's instrumentation needs nightly.
if ! command -v rustup >/dev/null 2>&1; then
    die "rustup not found: the fuzz targets need the nightly toolchain"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "ci/fuzz.sh: no nightly toolchain: installing it"
    rustup toolchain install nightly --profile minimal ||
        die "the nightly toolchain could not be installed"
fi
# libFuzzer itself is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 &&
    ! command -v clang++ >/dev/null 2>&1; then
    die "no C++ compiler (c++, g++ or clang++): libFuzzer cannot be built"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "ci/fuzz.sh: cargo-fuzz missing: cargo install cargo-fuzz --locked"
    if ! out=$(cargo install cargo-fuzz --locked 2>&1); then
        echo "$out" | tail -n 20 >&2
        die "cargo-fuzz could not be installed: $(echo "$out" | grep -m1 -i 'error' || echo "see above")"
    fi
fi
cargo fuzz --version
cargo +nightly --version

echo "::: building ${#targets[@]} fuzz targets"
t0=$SECONDS
for t in "${targets[@]}"; do
    cargo +nightly fuzz build "$t"
done
echo "::: built in $((SECONDS - t0))s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rows=()
failed=()
for t in "${targets[@]}"; do
    if ((grow)); then
        corpus="fuzz/corpus/$t"
        mkdir -p "$corpus"
    else
        corpus="$work/corpus/$t"
        mkdir -p "$corpus"
        if [[ -d "fuzz/corpus/$t" ]]; then
            cp -R "fuzz/corpus/$t/." "$corpus/"
        fi
    fi
    log="$work/$t.log"
    echo "::: $t for ${per_target}s ($(find "$corpus" -type f | wc -l) seeds)"
    status=0
    cargo +nightly fuzz run "$t" "$corpus" -- \
        -max_total_time="$per_target" -print_final_stats=1 \
        -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$UNIT_TIMEOUT" \
        >"$log" 2>&1 || status=$?
    # libFuzzer's final statistics (-print_final_stats), and the input it
    # wrote if something went wrong; absent ones are empty.
    execs=$(awk '/^stat::number_of_executed_units:/ {print $2; exit}' "$log")
    rate=$(awk '/^stat::average_exec_per_sec:/ {print $2; exit}' "$log")
    artifact=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -n 1)
    if ((status == 0)) && [[ -z "$artifact" ]]; then
        result=ok
    else
        result="CRASHED (exit $status)"
        failed+=("$t")
        # The fuzzer's own account of the failure: the panic and the
        # input.
        grep -v '^#[0-9]' "$log" | tail -n 40 >&2 || true
        if [[ -n "$artifact" ]]; then
            echo "ci/fuzz.sh: $t crashed on $artifact" >&2
            echo "ci/fuzz.sh: reproduce: cargo +nightly fuzz run $t $artifact" >&2
        else
            echo "ci/fuzz.sh: $t failed without writing an input (exit $status)" >&2
        fi
    fi
    echo "::: $t: ${execs:-?} executions (${rate:-?}/s): $result"
    rows+=("$(printf '%-14s %6ss %12s %9s  %s' "$t" "$per_target" "${execs:-?}" "${rate:-?}" "$result")")
done

echo
echo "::: summary"
printf '  %-14s %7s %12s %9s  %s\n' target time executions "exec/s" result
printf '  %s\n' "${rows[@]}"
if ((${#failed[@]})); then
    echo "::: crashed: ${failed[*]}"
    exit 1
fi
