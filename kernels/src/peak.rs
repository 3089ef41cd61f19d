//! A probe of the machine's FMA peak per instruction set and core, so that
//! every kernel's speed can be read as a fraction of what the core can do.

use crate::simd::Simd;

/// Independent accumulator chains: enough to cover FMA latency (4-5
/// cycles) times the FMA ports (2) of current x86 and Arm cores.
const CHAINS: usize = 12;

/// Runs `iters` rounds of `CHAINS` independent vector FMAs and returns a
/// value depending on all of them (so the work cannot be optimized away).
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn fma_chains<S: Simd>(iters: u64) -> f32 {
    // SAFETY: the CPU runs S (caller); no memory is accessed.
    unsafe {
        let (a, b) = (S::splat(0.999_999), S::splat(1e-7));
        let mut acc = [S::zero(); CHAINS];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = S::splat(i as f32);
        }
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = S::fmadd(*v, a, b);
            }
        }
        acc.iter().map(|&v| S::hsum(v)).sum()
    }
}

/// FLOPs per call of `fma_chains::<S>(iters)`.
pub(crate) fn flops<S: Simd>(iters: u64) -> f64 {
    iters as f64 * CHAINS as f64 * S::LANES as f64 * 2.0
}
