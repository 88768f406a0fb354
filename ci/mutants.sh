#!/usr/bin/env bash
# Mutation testing of the core's map, copy and allocation-policy code: does
# the test suite notice when the code is broken on purpose?
#
# Two parts, one score:
# 1. cargo-mutants over crates/swiotlb/src/map/*.rs, copy.rs,
#    pool/policy.rs, pool/nextfit.rs and pool/fast.rs: it rewrites one
#    operator, condition or function body at a time and runs the core's
#    tests against each.
# 2. The hand-written mutants in ci/mutants/*.patch. cargo-mutants leaves
#    the bodies of `unsafe fn` alone, and that is where the copies between
#    originals and slots are (`bounce_copy`, the map-time copy, unmap's
#    copy-back, the raw syncs); each patch breaks one of them, is applied
#    to a scratch copy of the tree, the tests run, and the patch is taken
#    back out.
#
# A mutant is caught when a test fails (or, for cargo-mutants, times out:
# nextest kills a hanging test, so a hang is a failure in bounded time, see
# .config/nextest.toml). Every survivor is printed; docs/RELIABILITY.md
# holds the last score and says, for each survivor, why it is harmless.
#
# NOT run by .ci/run: the whole run takes about an hour and a half on 2
# shared cores (most of it pool/fast.rs). Run it by hand after changing any
# of the files above, and update docs/RELIABILITY.md with what it prints.
#
# Usage: ci/mutants.sh [--no-fast] [--hand-only] [--auto-only]
#   --no-fast    leave pool/fast.rs out of the cargo-mutants part (about
#                30 minutes in all)
#   --hand-only  only the hand-written mutants (about 6 minutes)
#   --auto-only  only the cargo-mutants part
# Tests run through nextest, one mutant at a time (`-j 1`): the machine
# is shared. Results go to target/mutants/.
#
# Survivors listed in ci/mutants/harmless.txt (exactly as printed, line
# and column included) were judged harmless in docs/RELIABILITY.md; they
# still count against the score. When the code moves, their lines change
# and they show up as new survivors: judge them again.
#
# Exit status: 0 when every survivor is a listed harmless one, 1 when
# another survives or a hand-written patch no longer applies or no longer
# builds (the code moved: rewrite the patch).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

files=(
    crates/swiotlb/src/map/mod.rs
    crates/swiotlb/src/map/raw.rs
    crates/swiotlb/src/map/sg.rs
    crates/swiotlb/src/map/buffer.rs
    crates/swiotlb/src/map/mapping.rs
    crates/swiotlb/src/copy.rs
    crates/swiotlb/src/pool/policy.rs
    crates/swiotlb/src/pool/nextfit.rs
    crates/swiotlb/src/pool/fast.rs
)
auto=1
hand=1
for arg in "$@"; do
    case $arg in
    --no-fast) files=("${files[@]/crates\/swiotlb\/src\/pool\/fast.rs/}") ;;
    --hand-only) auto=0 ;;
    --auto-only) hand=0 ;;
    *)
        echo "usage: ci/mutants.sh [--no-fast] [--hand-only] [--auto-only]" >&2
        exit 64
        ;;
    esac
done

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "ci/mutants.sh: cargo-nextest not found; installing it (cargo install cargo-nextest --locked)"
    cargo install cargo-nextest --locked
fi
if ((auto)) && ! cargo mutants --version >/dev/null 2>&1; then
    echo "ci/mutants.sh: cargo-mutants not found; installing it (cargo install cargo-mutants --locked)"
    cargo install cargo-mutants --locked
fi

out=$root/target/mutants
mkdir -p "$out"
# A hanging test is killed after 30 s (nextest's `mutants` profile).
export NEXTEST_PROFILE=mutants

# Per-file and total counts: caught (timeouts included), missed.
declare -A caught missed
survivors=()
broken=()

# ---- 1. cargo-mutants ----------------------------------------------------
if ((auto)); then
    args=()
    names=()
    for f in "${files[@]}"; do
        [[ -n $f ]] || continue
        args+=(--file "$f")
        names+=("${f#crates/swiotlb/src/}")
    done
    echo "::: cargo-mutants over crates/swiotlb/src/: ${names[*]}"
    rc=0
    # --timeout bounds each mutant's test run, should nextest's own
    # limit not fire (a hang outside a test, in the harness).
    cargo mutants --package swiotlb --test-package swiotlb --test-tool nextest \
        --jobs 1 --timeout 120 --build-timeout 600 --colors never \
        --output "$out" "${args[@]}" || rc=$?
    # 0: all caught; 2: some missed; 3: some timed out. Anything else is a
    # failed baseline or a usage error: no score.
    if ((rc != 0 && rc != 2 && rc != 3)); then
        echo "ci/mutants.sh: cargo-mutants failed (exit $rc); see $out/mutants.out" >&2
        exit 1
    fi
    mo=$out/mutants.out
    for f in "${files[@]}"; do
        [[ -n $f ]] || continue
        c=$(cat "$mo/caught.txt" "$mo/timeout.txt" 2>/dev/null | grep -c "^$f:" || true)
        m=$(grep -c "^$f:" "$mo/missed.txt" 2>/dev/null || true)
        caught[$f]=$c
        missed[$f]=$m
    done
    while IFS= read -r line; do
        [[ -n $line ]] && survivors+=("cargo-mutants: $line")
    done < <(cat "$mo/missed.txt" 2>/dev/null || true)
    timeouts=$(grep -c . "$mo/timeout.txt" 2>/dev/null || true)
    unviable=$(grep -c . "$mo/unviable.txt" 2>/dev/null || true)
    echo "::: cargo-mutants: ${timeouts:-0} timed out (counted as caught), ${unviable:-0} did not build (not counted)"
fi

# ---- 2. hand-written mutants of unsafe fn bodies --------------------------
if ((hand)); then
    scratch=$(mktemp -d /tmp/swiotlb-mutants.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    # Tracked and new files, not ignored ones (no target/). Extracted with
    # the current time (-m): the target directory is kept between runs and
    # cargo judges freshness by mtime over paths relative to the package,
    # so files carrying their old times would pass for the last mutant's
    # build, left there by the previous run.
    git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf - | tar -xmf - -C "$scratch"
    # Kept between runs, so only the first build is a full one.
    export CARGO_TARGET_DIR=$out/hand-target
    (cd "$scratch" && cargo nextest run -p swiotlb --no-run >"$out/hand-build.log" 2>&1) || {
        echo "ci/mutants.sh: the unmutated tree does not build; see $out/hand-build.log" >&2
        exit 1
    }
    (cd "$scratch" && cargo nextest run -p swiotlb >"$out/hand-baseline.log" 2>&1) || {
        echo "ci/mutants.sh: the unmutated tests fail; see $out/hand-baseline.log" >&2
        exit 1
    }
    for patch in ci/mutants/*.patch; do
        name=$(basename "$patch" .patch)
        what=$(head -n 1 "$patch" | sed 's/^Hand-written mutant: //')
        file=$(sed -n 's|^+++ b/||p' "$patch" | head -n 1)
        log=$out/hand-$name.log
        # Outside a repository `git apply` patches files relative to the
        # current directory, like patch(1), with git's exactness.
        if ! (cd "$scratch" && git apply "$root/$patch") 2>"$log"; then
            echo "STALE    $name: does not apply (rewrite it against the current code)"
            broken+=("$name: does not apply")
            continue
        fi
        if ! (cd "$scratch" && timeout 900 cargo nextest run -p swiotlb --no-run) >>"$log" 2>&1; then
            echo "UNVIABLE $name: does not build (rewrite it)"
            broken+=("$name: does not build")
        elif (cd "$scratch" && timeout 300 cargo nextest run -p swiotlb) >>"$log" 2>&1; then
            echo "MISSED   $name: $what"
            survivors+=("hand-written: $name ($file): $what")
            missed[$file]=$((${missed[$file]:-0} + 1))
        else
            echo "caught   $name"
            caught[$file]=$((${caught[$file]:-0} + 1))
        fi
        (cd "$scratch" && git apply -R "$root/$patch")
    done
fi

# ---- score ---------------------------------------------------------------
echo
echo "::: mutation score (caught / (caught + missed); timeouts are caught, unviable not counted)"
total_c=0
total_m=0
for f in $(printf '%s\n' "${!caught[@]}" "${!missed[@]}" | sort -u); do
    c=${caught[$f]:-0}
    m=${missed[$f]:-0}
    total_c=$((total_c + c))
    total_m=$((total_m + m))
    if ((c + m)); then
        awk -v f="$f" -v c="$c" -v m="$m" 'BEGIN { printf "  %-40s %4d / %-4d %5.1f %%\n", f, c, c + m, 100 * c / (c + m) }'
    fi
done
if ((total_c + total_m)); then
    awk -v c="$total_c" -v m="$total_m" 'BEGIN { printf "  %-40s %4d / %-4d %5.1f %%\n", "overall", c, c + m, 100 * c / (c + m) }'
fi
# Known harmless survivors: the lines of ci/mutants/harmless.txt that are
# not comments.
declare -A harmless
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] || harmless[$line]=1
done <ci/mutants/harmless.txt
new=0
echo
echo "::: survivors: ${#survivors[@]}"
for s in "${survivors[@]}"; do
    if [[ -n ${harmless[${s#cargo-mutants: }]:-} ]]; then
        echo "  $s   (harmless: docs/RELIABILITY.md)"
    else
        echo "  $s   NEW"
        new=$((new + 1))
    fi
done
if ((${#broken[@]})); then
    echo
    echo "::: hand-written mutants to rewrite: ${#broken[@]}"
    for b in "${broken[@]}"; do
        echo "  $b"
    done
fi
((new == 0 && ${#broken[@]} == 0))
