#!/usr/bin/env bash
# Long fuzzing runs with cargo-fuzz (libFuzzer), one target after another, each until 10^6
# executions or SECONDS_PER_TARGET, whichever comes first:
#   scripts/fuzz.sh [SECONDS_PER_TARGET (default 600)] [TARGET ...]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The seeds are small
# slices of the real files, written to fuzz/corpus/<target>/ by tests/fuzz_smoke.rs; libFuzzer
# adds what it finds there. A crash, an allocation over 2 GiB or an input that runs over 10 s
# stops a target and leaves the input in fuzz/artifacts/<target>/. Each target's executions are
# summed up at the end from fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf hf_dir rows_jsonl rows_json rows_csv rows_parquet chat_template run_config)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/decpo/ci-target}"
DECPO_FUZZ_CORPUS="$PWD/fuzz/corpus" DECPO_FUZZ_SECONDS=0 \
    cargo test --quiet --test fuzz_smoke >/dev/null
mkdir -p fuzz/logs
status=0
for t in "${targets[@]}"; do
    echo "== $t: 10^6 executions or ${secs} s"
    # The fuzz crate builds in its own target folder (nightly, sanitizers).
    if ! (cd fuzz && env -u CARGO_TARGET_DIR cargo +nightly fuzz run "$t" "corpus/$t" -- \
            -runs=1000000 -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
            -print_final_stats=1) >"fuzz/logs/$t.log" 2>&1; then
        echo "   FAILED: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo "?")
    secs_run=$(grep -o 'Done [0-9]* runs in [0-9]* second' "fuzz/logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
    echo "   executions: $runs in ${secs_run} s"
done
exit $status
