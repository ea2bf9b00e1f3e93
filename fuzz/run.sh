#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15) with cargo fuzz on the stable
# toolchain (libFuzzer without a sanitizer), from seed corpora made by seed.py. A failure
# leaves its input in fuzz/artifacts/TARGET/ and stops with a non-zero exit: keep it in
# fuzz/regressions/TARGET/, where tests/fuzz_regressions.rs runs it with every test run.
#   bash fuzz/run.sh 15                 every target, 15 s each (what CI runs)
#   bash fuzz/run.sh 3600 differential  one target for an hour
# FUZZ_SEED fixes libFuzzer's seed, so that a run explores the same inputs in the same
# order each time (the test script sets it: a gate must not pass or fail by luck); unset,
# each run starts from a fresh seed and explores further.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json_scan record export header rules mask differential)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
python3 seed.py
cargo fuzz build --sanitizer none
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run --sanitizer none "$target" -- \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|thread|.*panicked)' || true
  if ls "artifacts/$target"/* >/dev/null 2>&1; then
    echo "fuzz target $target failed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
