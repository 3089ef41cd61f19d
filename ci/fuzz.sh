#!/usr/bin/env bash
# Bounded fuzzing of every parser kiln runs on files it did not write (IDX,
# raw and gzip, model files, images, .npy and .npz) with cargo-fuzz (libFuzzer), when the
# nightly toolchain is there; cargo-fuzz is installed from crates.io if
# missing. Each target starts from its committed seeds (fuzz/seeds/<target>,
# written by fuzz/make_seeds.py) and runs for FUZZ_SECONDS (default 45).
# A crash fails the run; save its input under fuzz/regressions/<target>/ and
# tests/fuzz_seeds.rs replays it on every test run from then on.
# Usage: bash ci/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-45}
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(idx_raw idx_gzip model image npz)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain here; skipped (cargo-fuzz needs nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install --locked --quiet cargo-fuzz
fi

summary=()
for t in "${targets[@]}"; do
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus"
  log=target/fuzz-$t.log
  echo "fuzz: $t for ${seconds}s"
  if ! cargo +nightly fuzz run --release "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (copy it to fuzz/regressions/$t/ as a test)" >&2
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  files=$(find "$corpus" -type f | wc -l)
  summary+=("$(printf '%-9s %12s %8s %8s %8s' "$t" "$runs" "$cov" "$ft" "$files")")
done
echo
printf '%-9s %12s %8s %8s %8s\n' target executions cov features corpus
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
