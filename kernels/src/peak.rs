//! Probes of what one core can do per instruction set, so that every
//! kernel's speed can be read against it: the FMA peak, and the ceilings
//! below it that the kernels' own instruction mixes meet (`Ceilings`).

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

/// Which ceiling [`probe`] measures (see `Ceilings` for what each means):
/// a const parameter, so that each probe is compiled on its own.
pub(crate) mod probes {
    /// The GEMM microkernel on panels that stay in L1.
    pub(crate) const TILE: u8 = 0;
    /// `CHAINS` FMA chains whose every FMA takes one vector loaded from L1.
    pub(crate) const LOAD_FMA: u8 = 1;
    /// `CHAINS` chains of `b / sqrt(v)` (RMSprop's two rounded operations).
    pub(crate) const SQRT_DIV: u8 = 2;
}

/// Depth of the microkernel's panels in [`probes::TILE`]: A and B (22 KiB
/// for AVX-512's 12 x 32 tile) stay in a 32 KiB L1.
const TILE_KC: usize = 128;

/// Floats [`probes::LOAD_FMA`] cycles through: 4 KiB, in L1.
const LOAD_SPAN: usize = 1024;

/// Runs `iters` rounds of probe `P` (one of [`probes`]) and returns a
/// value depending on all of them.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn probe<S: Simd, const MR: usize, const NV: usize, const P: u8>(iters: u64) -> f32 {
    let nr = NV * S::LANES;
    // SAFETY: the CPU runs S (caller); the microkernel's panels hold
    // TILE_KC * MR and TILE_KC * NR floats, and every other load or store is
    // inside `c` (MR * NR floats) or `w` (rounds * CHAINS * LANES <= LOAD_SPAN).
    unsafe {
        match P {
            probes::TILE => {
                let a = crate::AlignedVec::from_slice(&vec![1e-3f32; TILE_KC * MR]);
                let b = crate::AlignedVec::from_slice(&vec![1e-3f32; TILE_KC * nr]);
                let mut c = crate::AlignedVec::<f32>::zeroed(MR * nr);
                for _ in 0..iters {
                    // As in a product: the tile starts from zero and is
                    // stored at the end (black_box: the compiler may not
                    // keep the panels in registers across calls).
                    let (a, b) = (std::hint::black_box(&a[..]), std::hint::black_box(&b[..]));
                    let mut acc = [[S::zero(); NV]; MR];
                    crate::gemm::microkernel::<S, MR, NV, true>(TILE_KC, MR, a, b, &mut acc);
                    for (r, row) in acc.iter().enumerate() {
                        for (v, &x) in row.iter().enumerate() {
                            S::store(c.as_mut_ptr().add(r * nr + v * S::LANES), x);
                        }
                    }
                    std::hint::black_box(&mut c[..]);
                }
                c.iter().sum()
            }
            probes::LOAD_FMA => {
                let w = crate::AlignedVec::from_slice(&vec![1e-3f32; LOAD_SPAN]);
                let x = S::splat(1e-3);
                let mut acc = [S::zero(); CHAINS];
                let rounds = LOAD_SPAN / (CHAINS * S::LANES);
                for _ in 0..iters {
                    let w = std::hint::black_box(&w[..]);
                    for r in 0..rounds {
                        let p = w.as_ptr().add(r * CHAINS * S::LANES);
                        for (c, v) in acc.iter_mut().enumerate() {
                            *v = S::fmadd(x, S::load(p.add(c * S::LANES)), *v);
                        }
                    }
                }
                acc.iter().map(|&v| S::hsum(v)).sum()
            }
            _ => {
                let b = S::splat(1.0001);
                let mut v = [S::splat(1.5); CHAINS];
                for _ in 0..iters {
                    for x in v.iter_mut() {
                        *x = S::div(b, S::sqrt(*x));
                    }
                }
                v.iter().map(|&x| S::hsum(x)).sum()
            }
        }
    }
}

/// What one call of `probe::<S, MR, NV, P>(iters)` does: FLOPs for the
/// FMA probes, vectors for [`probes::SQRT_DIV`].
pub(crate) fn work<S: Simd>(p: u8, iters: u64, (mr, nv): (usize, usize)) -> f64 {
    let lanes = S::LANES as f64;
    iters as f64
        * match p {
            probes::TILE => (TILE_KC * mr * nv) as f64 * lanes * 2.0,
            probes::LOAD_FMA => ((LOAD_SPAN / (CHAINS * S::LANES)) * CHAINS) as f64 * lanes * 2.0,
            _ => CHAINS as f64,
        }
}
