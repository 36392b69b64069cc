#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for a while each; needs nightly Rust and cargo-fuzz:
#   cargo install cargo-fuzz && fuzz/run.sh [--time SECONDS] [target...]
# Corpora grow in fuzz/corpus/<target>/ (seeded from the test suite's generators and the shared
# ComfyUI workflows); findings land in fuzz/artifacts/<target>/. Copy a finding into
# fuzz/regressions/<target>/ once fixed, so `cargo test` keeps replaying it.
set -euo pipefail
cd "$(dirname "$0")/.."
time_per_target=600
if [[ "${1:-}" == "--time" ]]; then time_per_target=$2; shift 2; fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(safetensors_header checkpoint pickle png_text workflow extra_model_paths lora)
fi

# The LoRA target saves a small merge per input; on tmpfs that runs ~7x faster than on disk.
if [[ -z "${TMPDIR:-}" && -d /dev/shm ]]; then export TMPDIR=/dev/shm; fi

AMALGAM_WRITE_SEEDS="$PWD/fuzz/corpus/seeds" cargo test -q --test it fuzz_regressions >/dev/null
# No sanitizer: Amalgam's only unsafe code is one read-only mmap; what we look for is panics,
# hangs and allocations, which the allocation budget (fuzz_targets/budget.rs) and libFuzzer's
# -timeout and -rss_limit_mb catch without ASan's slowdown.
cargo +nightly fuzz build -s none -O

for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "== $t (${time_per_target}s)"
    "fuzz/target/x86_64-unknown-linux-gnu/release/$t" \
        "fuzz/corpus/$t" "fuzz/corpus/seeds/$t" \
        -artifact_prefix="fuzz/artifacts/$t/" \
        -max_total_time="$time_per_target" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done)|panicked|budget|deadly|Test unit written' || true
done
