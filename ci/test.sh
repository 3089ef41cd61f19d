#!/usr/bin/env bash
# kiln's test command. Installs what it needs (when run as root: Debian's
# OpenBLAS, the aarch64 cross linker and qemu, the aarch64 Rust target), then
# runs formatting, lints and the whole test suite built with optimizations:
#   1. every backend this machine runs (auto), with and without `--features blas`;
#   2. once per instruction set the CPU has, forced (KILN_TEST_BACKEND), so a
#      forced ISA that silently did not run fails the build;
#   3. the NEON backend, cross-built for aarch64 and run under qemu;
#   4. the Python package, installed with pip into a virtual environment
#      of its own, and its tests (python/tests);
#   5. bounded fuzzing of every parser (ci/fuzz.sh, cargo-fuzz on nightly);
#      the draw-a-digit page in headless Chromium (tests/browser.rs) and a
#      bounded load test of the server run with the suite;
#   6. the epoch-time regression gate (ci/gate.sh) and its self-test.
# Usage: bash ci/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
has_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# The whole run writes about 5 GB under target/ and fuzz/target/; say what
# the disk has, so that a run that fills it is told from a failing test.
step "disk"
df -h . | tail -n 1
avail_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
[ "$avail_kb" -ge $((8 * 1024 * 1024)) ] || echo "warning: under 8 GB free here; the build and tests need about 5 GB" >&2

step "system packages"
need=()
for p in libopenblas-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user valgrind chromium chromium-driver; do
  has_pkg "$p" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing packages (run as root to install): ${need[*]}" >&2
    exit 1
  fi
fi
echo "ok: libopenblas-dev, gcc-aarch64-linux-gnu, qemu-user, valgrind, chromium, chromium-driver"
# The browser test of the draw-a-digit page must run here, not skip.
export KILN_BROWSER_TEST=1

step "toolchain"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add aarch64-unknown-linux-gnu >/dev/null
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo doc (every public item's docs and links, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo clippy (all targets, default features and blas, warnings are errors)"
cargo clippy --workspace --all-targets --release -- -D warnings
cargo clippy --workspace --all-targets --release --features blas -- -D warnings

mkdir -p target
log=target/test-output.txt
: > "$log"
run_tests() {
  echo "+ $*"
  "$@" 2>&1 | tee -a "$log"
}

step "tests, every available backend (release build)"
run_tests cargo test --workspace --release

step "the library example (trains a small Sequential model on data it builds)"
cargo run --release --quiet --example sequential

step "the serve load test (benches/serve_load.rs: 20,000 requests, 16 clients; fails on any error)"
cargo bench --quiet --bench serve_load 2>/dev/null

step "the server under adversarial load (benches/serve_adversarial.rs: 100 connections holding 10 MB bodies, 8 clients posting 7000x7000 and 2048x2048 PNGs; fails if peak RSS reaches 256 MB or a legitimate prediction takes 1 s)"
cargo bench --quiet --bench serve_adversarial 2>/dev/null

step "tests with the BLAS backend (--features blas)"
run_tests cargo test --workspace --release --features blas

step "the Python package: pip install ./python into a virtual environment, then its tests (python/tests: the tutorial's program and Keras's mnist_mlp.py as users run them, and the Keras-shaped API)"
venv=target/py-venv
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q numpy pytest onnx onnxruntime "ray[tune]"
"$venv/bin/pip" install -q --force-reinstall --no-deps ./python
"$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir python python/tests

# The instruction sets come from the crate's own list (BACKEND_NAMES, by
# kernels/examples/backends.rs), so a new one is forced here wherever the
# CPU runs it; the listing says why each other backend does not run.
step "the backends on this machine"
cargo run -q --release -p kiln-kernels --example backends
mapfile -t simd < <(cargo run -q --release -p kiln-kernels --example backends -- --simd)
# Every CPU of this project's kind has AVX2 at least: none found is a fault.
[ "${#simd[@]}" -gt 0 ] || { echo "no instruction-set backend listed (kernels/examples/backends.rs)" >&2; exit 1; }
for isa in "${simd[@]}"; do
  step "kernel and training tests forced to $isa"
  KILN_TEST_BACKEND=$isa run_tests cargo test --release -p kiln-kernels --test backends
  KILN_TEST_BACKEND=$isa run_tests cargo test --release -p kiln --test backends_train --test keras_golden
done

step "kernel tests with another CPU's cache-derived blocking (KILN_CACHES=48K,2M, Sapphire Rapids' L1d and L2)"
KILN_CACHES=48K,2M run_tests cargo test --release -p kiln-kernels --test backends

step "NEON backend on aarch64 under qemu"
KILN_TEST_BACKEND=neon run_tests cargo test --release --target aarch64-unknown-linux-gnu \
  -p kiln-kernels --lib --test backends --test scalar_reference
KILN_TEST_BACKEND=neon run_tests cargo test --release --target aarch64-unknown-linux-gnu \
  -p kiln --test backends_train --test keras_golden

step "fuzzing: IDX raw and gzip, model files, images, .npy and .npz (ci/fuzz.sh, 45 s per target)"
bash ci/fuzz.sh

step "epoch-time regression gate (ci/gate.sh), and its self-test on a deliberately slower build"
bash ci/gate.sh
bash ci/gate.sh --selftest

step "disk used by the build"
du -sh target fuzz/target 2>/dev/null || true

# Every runner printed its own summary; add them up and fail if none ran.
passed=$(grep -E '^test result:' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | awk '{s += $6} END {print s + 0}')
echo
echo "all suites: $passed passed, $failed failed"
[ "$passed" -gt 0 ] || { echo "no test ran" >&2; exit 1; }
[ "$failed" -eq 0 ] || exit 1
