#!/usr/bin/env bash
# The epoch-time regression gate. See README ("The CI gate on epoch time") for the design.
#
#   bash ci/gate.sh            check against ci/baseline.json (exit 1 on a regression)
#   bash ci/gate.sh --update   measure and write ci/baseline.json
#   bash ci/gate.sh --selftest run the workload with --selftest-slowdown (every step
#                              first redoes the forward on 60% of its rows) and check
#                              that the gate FAILS on it (exit 1 if it slips through)
#
# Hard gate: instructions executed by the first STEPS training steps of epoch 1
# (examples/gate_workload.rs, AVX2 forced since valgrind has no AVX-512, one
# thread), counted by callgrind inside `run_steps` only. The count repeats to
# within a few instructions whatever else the machine does, so the threshold
# can be tight. Informational: wall time of the same workload, 2 threads,
# median of 3, next to the machine's measured FMA rate.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=5
THRESHOLD=1.10   # fail when instructions exceed the baseline by more than 10%
BASELINE=ci/baseline.json
mode=${1:-check}

if ! grep -qw avx2 /proc/cpuinfo || ! grep -qw fma /proc/cpuinfo; then
  echo "gate: this CPU has no AVX2+FMA; the instruction-count gate is defined on the AVX2 backend: skipped"
  exit 0
fi
command -v valgrind >/dev/null || { echo "gate: valgrind is not installed" >&2; exit 1; }

extra=()
[ "$mode" = --selftest ] && extra=(--selftest-slowdown)
cargo build --release --quiet --example gate_workload
bin=target/release/examples/gate_workload

# Decompress the data natively first (the cache), then count.
"$bin" --steps 1 >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
  --toggle-collect='*run_steps*' "$bin" --steps "$STEPS" --backend avx2 --threads 1 "${extra[@]}" >/dev/null 2>&1
instr=$(awk '/^totals:/ {print $2}' "$out")
[ -n "$instr" ] && [ "$instr" -gt 0 ] || { echo "gate: callgrind counted nothing" >&2; exit 1; }

walls=()
for _ in 1 2 3; do
  walls+=("$("$bin" --steps 100 --backend avx2 --threads 2 "${extra[@]}" | sed -E 's/.*"seconds":([0-9.e-]+).*/\1/')")
done
wall=$(printf '%s\n' "${walls[@]}" | sort -g | sed -n 2p)

if [ "$mode" = --update ]; then
  cat > "$BASELINE" <<JSON
{
  "workload": "examples/gate_workload.rs: first $STEPS steps of epoch 1, seed 1, batch 128, hidden 512, avx2, 1 thread",
  "instructions": $instr,
  "wall_seconds_100_steps_2_threads": $wall,
  "rustc": "$(rustc --version)",
  "valgrind": "$(valgrind --version)",
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}
JSON
  echo "gate: wrote $BASELINE ($instr instructions)"
  exit 0
fi

base=$(sed -nE 's/.*"instructions": ([0-9]+).*/\1/p' "$BASELINE")
base_wall=$(sed -nE 's/.*"wall_seconds_100_steps_2_threads": ([0-9.e-]+).*/\1/p' "$BASELINE")
ratio=$(awk -v a="$instr" -v b="$base" 'BEGIN {printf "%.4f", a / b}')
wratio=$(awk -v a="$wall" -v b="$base_wall" 'BEGIN {printf "%.3f", a / b}')
printf '\n%-44s %16s %16s %8s\n' "gate ($STEPS steps, avx2)" baseline now ratio
printf '%-44s %16s %16s %8s\n' "instructions in run_steps (hard gate)" "$base" "$instr" "$ratio"
printf '%-44s %16s %16s %8s\n' "wall s, 100 steps, 2 threads (info only)" "$base_wall" "$wall" "$wratio"
printf 'threshold: instructions ratio <= %s\n' "$THRESHOLD"

fail=$(awk -v r="$ratio" -v t="$THRESHOLD" 'BEGIN {print (r > t) ? 1 : 0}')
if [ "$mode" = --selftest ]; then
  if [ "$fail" = 1 ]; then
    echo "gate selftest: the deliberately slower build was caught (ratio $ratio > $THRESHOLD): ok"
    exit 0
  fi
  echo "gate selftest: the deliberately slower build slipped through (ratio $ratio)" >&2
  exit 1
fi
if [ "$fail" = 1 ]; then
  echo "gate: REGRESSION: the training step executes ${ratio}x the baseline's instructions" >&2
  exit 1
fi
if awk -v r="$ratio" 'BEGIN {exit !(r < 0.9)}'; then
  echo "gate: faster than the baseline; refresh it to lock the gain in: bash ci/gate.sh --update"
fi
echo "gate: ok"
