#!/usr/bin/env bash
# kiln's test command: installs what it needs (when run as root), then runs
# formatting, lints and the whole test suite built with optimizations.
# Usage: bash ci/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust with rustup first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --release -- -D warnings

step "tests (release build)"
cargo test --workspace --release 2>&1 | tee target/test-output.txt
# Fail loudly if, somehow, no test ran at all.
total=$(grep -E '^test result:' target/test-output.txt | awk '{s += $4} END {print s + 0}')
echo "tests passed in total: $total"
[ "$total" -gt 0 ] || { echo "no test ran" >&2; exit 1; }
