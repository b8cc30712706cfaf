#!/usr/bin/env bash
# Fuzzes every signature header parser briefly and prints the executions reached.
#
# With a nightly toolchain: cargo-fuzz (installed here if missing) runs each target in fuzz/
# under libFuzzer for FUZZ_SECONDS (default 20) seconds. Without nightly: the stable
# arbitrary-bytes harness (tests/signature/signature_fuzz.rs) runs with FUZZ_CASES (default 20000) cases
# per property. Not part of .ci/run (it takes minutes); exits non-zero on any crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"

if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked --quiet
    fi
    cargo +nightly fuzz build --fuzz-dir fuzz -O >/dev/null 2>&1 || cargo +nightly fuzz build --fuzz-dir fuzz -O
    total=0
    for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
        log="fuzz/target/${target}.log"
        mkdir -p "fuzz/corpus/${target}"
        cargo +nightly fuzz run --fuzz-dir fuzz -O "$target" "fuzz/corpus/${target}" -- \
            -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1 || {
            tail -n 40 "$log"
            echo "fuzz: target ${target} failed" >&2
            exit 1
        }
        runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
        echo "fuzz: ${target}: ${runs} executions in ${SECONDS_PER_TARGET}s, no crash"
        total=$((total + runs))
    done
    echo "fuzz: ${total} executions in all"
else
    echo "fuzz: no nightly toolchain; running the stable arbitrary-bytes harness"
    export TOWER_WEBHOOK_FUZZ_CASES="${FUZZ_CASES:-20000}"
    # nextest when it is installed; plain `cargo test` on a machine without it.
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --all-features --test signature -E 'test(/^signature_fuzz::/)'
    else
        cargo test --all-features --test signature -- signature_fuzz::
    fi
    echo "fuzz: ${TOWER_WEBHOOK_FUZZ_CASES} cases per property, no failure"
fi
