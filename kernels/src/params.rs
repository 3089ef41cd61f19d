//! Register tiles of the packed GEMM (`gemm.rs`) and the sparse path's
//! threshold, each documented with what it decides. `MR x NR` is the register tile of the microkernel:
//! `MR` rows of A broadcast against `NV` vectors (`NR = NV * LANES` columns)
//! of B, `MR * NV` accumulators live in registers.

// The cache-dependent blocks (the GEMM's `KC` and `MC`, the sparse
// kernels' blocks) are derived from the machine's caches: `caches.rs`.

/// AVX2 + FMA (16 `ymm`): a 6 x 16 tile, 12 accumulators + 2 B vectors + 1
/// broadcast = 15 registers.
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2_MR: usize = 6;
/// AVX2 vectors per tile row (`NR = 2 x 8 = 16`).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2_NV: usize = 2;

/// AVX-512 (32 `zmm`): a 12 x 32 tile, 24 accumulators + 2 B vectors + 1
/// broadcast = 27 registers.
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_MR: usize = 12;
/// AVX-512 vectors per tile row (`NR = 2 x 16 = 32`).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_NV: usize = 2;

/// NEON (32 `v` registers of 4 lanes): an 8 x 12 tile, 24 accumulators + 3 B
/// vectors + 1 broadcast = 28 registers.
#[cfg(target_arch = "aarch64")]
pub(crate) const NEON_MR: usize = 8;
/// NEON vectors per tile row (`NR = 3 x 4 = 12`).
#[cfg(target_arch = "aarch64")]
pub(crate) const NEON_NV: usize = 3;

/// Largest `MR * NR` of any tile above: the size of the edge-tile buffer
/// (each instruction set's tile is checked against it at compile time).
pub(crate) const MAX_TILE: usize = 12 * 32;

/// Layer 1 takes the sparse path (`sparse.rs`) when at most this fraction
/// of a batch's pixels is non-zero (`Layer1Path::Auto`): below that, the
/// skipped FMAs outweigh listing the non-zero pixels (docs/performance-log.md,
/// "Sparse layer 1").
pub(crate) const SPARSE_MAX_DENSITY: f64 = 0.5;

/// A hidden layer's weight gradient skips the zeros of its input (a
/// ReLU's) when at most this fraction of it is non-zero
/// (`Layer1Path::Auto`); results are bit-identical either way. Where the
/// sparse kernel stops winning on Zen 4 (docs/performance-log.md,
/// 2026-12-02: even with the dense one at 0.6).
pub(crate) const HIDDEN_GRAD_MAX_DENSITY: f64 = 0.5;

/// The same for a hidden layer's forward (zeros of its input) and input
/// gradient (zeros of `dZ`, which a ReLU above leaves in about 45% of it):
/// the sparse forward kernel still won at 0.6 (same log).
pub(crate) const HIDDEN_FORWARD_MAX_DENSITY: f64 = 0.6;
