//! Generic bodies of the ops around layer 2 (`N = 10`, the "small-n" case a
//! packed GEMM would waste its tile on) and of the RMSprop update. Layer 2's
//! kernel `W2 (K, N)` is transposed once per call into `W2^T (N, K)` so that
//! every product runs along contiguous rows of length `K`.
//!
//! Each function works on a slice of rows (or elements) that the caller
//! picked; a row's result never depends on how rows are split over threads.

use crate::simd::Simd;
use crate::RmsProp;

/// `dot(a, b)` over equal-length slices: `LANES`-wide FMA accumulation, a
/// horizontal sum, then the tail in scalar.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
unsafe fn dot<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    let l = S::LANES;
    let body = a.len() / l * l;
    // SAFETY: every load reads LANES floats below `body <= len`.
    let mut s = unsafe {
        let mut acc = S::zero();
        for i in (0..body).step_by(l) {
            acc = S::fmadd(S::load(a.as_ptr().add(i)), S::load(b.as_ptr().add(i)), acc);
        }
        S::hsum(acc)
    };
    for i in body..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += alpha * x` over equal-length slices.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
unsafe fn axpy<S: Simd>(y: &mut [f32], alpha: f32, x: &[f32]) {
    let l = S::LANES;
    let body = y.len() / l * l;
    // SAFETY: every access covers LANES floats below `body <= len`.
    unsafe {
        let av = S::splat(alpha);
        for i in (0..body).step_by(l) {
            let p = y.as_mut_ptr().add(i);
            S::store(p, S::fmadd(av, S::load(x.as_ptr().add(i)), S::load(p)));
        }
    }
    for i in body..y.len() {
        y[i] += alpha * x[i];
    }
}

/// Logits of rows of `H (B, K)` against `W^T (N, K)` plus `b`, written into
/// `p (B, N)`, to be finished by the shared softmax row.
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `wt` is `(N, K)`, `p` is `(B, N)`.
#[inline(always)]
pub(crate) unsafe fn logits<S: Simd>(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize) {
    for (i, prow) in p.chunks_exact_mut(n).enumerate() {
        let hrow = &h[i * k..(i + 1) * k];
        for (j, (out, &bias)) in prow.iter_mut().zip(b).enumerate() {
            // SAFETY: the CPU runs S (caller).
            *out = unsafe { dot::<S>(hrow, &wt[j * k..(j + 1) * k]) } + bias;
        }
    }
}

/// `dH[i, :] = (dZ[i, :] W^T) * [H[i, :] > 0]` for rows of `dH (B, K)`, with
/// `W^T (N, K)`: an axpy of each row of `W^T`, then the mask.
///
/// # Safety
/// The CPU runs `S`; `dh` and `h` are `(B, K)`, `dz` is `(B, N)`, `wt` is `(N, K)`.
#[inline(always)]
pub(crate) unsafe fn relu_backward_rows<S: Simd>(
    dh: &mut [f32],
    dz: &[f32],
    wt: &[f32],
    h: &[f32],
    k: usize,
    n: usize,
) {
    let l = S::LANES;
    let body = k / l * l;
    for (i, (dhrow, hrow)) in dh.chunks_exact_mut(k).zip(h.chunks_exact(k)).enumerate() {
        dhrow.fill(0.0);
        for (j, &g) in dz[i * n..(i + 1) * n].iter().enumerate() {
            // SAFETY: the CPU runs S (caller).
            unsafe { axpy::<S>(dhrow, g, &wt[j * k..(j + 1) * k]) };
        }
        // SAFETY: every access covers LANES floats below `body <= k`.
        unsafe {
            for i in (0..body).step_by(l) {
                let p = dhrow.as_mut_ptr().add(i);
                S::store(p, S::keep_where_positive(S::load(hrow.as_ptr().add(i)), S::load(p)));
            }
        }
        for (g, &hv) in dhrow[body..].iter_mut().zip(&hrow[body..]) {
            *g = if hv > 0.0 { *g } else { 0.0 };
        }
    }
}

/// `dW^T (N, K) := dZ^T H` for columns `k0 .. k0 + width` of `dW^T`, rows of
/// `dwt` given as `(N, width)`: an axpy per batch row, in batch order.
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `dz` is `(B, N)`, `dwt` is `(N, width)`.
#[inline(always)]
pub(crate) unsafe fn weight_grad_t<S: Simd>(dwt: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize) {
    let width = dwt.len() / n.max(1);
    let batch = dz.len() / n.max(1);
    dwt.fill(0.0);
    for i in 0..batch {
        let hs = &h[i * k + k0..i * k + k0 + width];
        for (j, &g) in dz[i * n..(i + 1) * n].iter().enumerate() {
            // SAFETY: the CPU runs S (caller).
            unsafe { axpy::<S>(&mut dwt[j * width..(j + 1) * width], g, hs) };
        }
    }
}

/// RMSprop's coefficients `(lr, rho, 1 - rho, eps)` in registers.
#[derive(Clone, Copy)]
pub(crate) struct RmsPropV<V> {
    lr: V,
    rho: V,
    decay: V,
    eps: V,
}

impl<V: Copy> RmsPropV<V> {
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    pub(crate) unsafe fn new<S: Simd<V = V>>(opt: RmsProp) -> Self {
        let (lr, rho, decay, eps) = opt.coefficients::<f32>();
        // SAFETY: the CPU runs S (caller).
        unsafe { RmsPropV { lr: S::splat(lr), rho: S::splat(rho), decay: S::splat(decay), eps: S::splat(eps) } }
    }
}

/// One RMSprop step of `LANES` parameters at `w` and velocities at `v` with
/// gradient `g`, with the scalar reference's exact sequence of roundings
/// (no FMA), so that every backend updates bit-identically.
///
/// # Safety
/// The CPU runs `S`; `w` and `v` are valid for `LANES` reads and writes.
#[inline(always)]
pub(crate) unsafe fn rmsprop_lanes<S: Simd>(w: *mut f32, v: *mut f32, g: S::V, c: RmsPropV<S::V>) {
    // SAFETY: forwarded contract.
    unsafe {
        let vn = S::add(S::mul(c.rho, S::load(v)), S::mul(c.decay, S::mul(g, g)));
        S::store(v, vn);
        let step = S::div(S::mul(c.lr, g), S::sqrt(S::add(vn, c.eps)));
        S::store(w, S::sub(S::load(w), step));
    }
}

/// One RMSprop step on a chunk (see [`rmsprop_lanes`]).
///
/// # Safety
/// The CPU runs `S`; `w`, `g` and `v` have equal lengths.
#[inline(always)]
pub(crate) unsafe fn rmsprop<S: Simd>(w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp) {
    let l = S::LANES;
    let body = w.len() / l * l;
    // SAFETY: every access covers LANES floats below `body <= len` of each
    // of the three equal-length slices; the CPU runs S (caller).
    unsafe {
        let c = RmsPropV::new::<S>(opt);
        for i in (0..body).step_by(l) {
            rmsprop_lanes::<S>(w.as_mut_ptr().add(i), v.as_mut_ptr().add(i), S::load(g.as_ptr().add(i)), c);
        }
    }
    crate::scalar::rmsprop_serial(&mut w[body..], &g[body..], &mut v[body..], opt);
}
