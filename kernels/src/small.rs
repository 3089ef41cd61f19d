//! Generic bodies of the ops around layer 2 (`N = 10`, the "small-n" case a
//! packed GEMM would waste its tile on) and of the RMSprop update. Layer 2's
//! kernel `W2 (K, N)` is transposed once per call into `W2^T (N, K)` so that
//! every product runs along contiguous rows of length `K`, with all ten
//! classes' accumulators in registers.
//!
//! Each function works on a slice of rows (or elements) that the caller
//! picked; a row's result never depends on how rows are split over threads.

use crate::simd::Simd;
use crate::RmsProp;

/// Classes handled together: their accumulators stay in registers.
const CB: usize = 10;

/// Logits of rows of `H (B, K)` against `W^T (N, K)` plus `b`, written into
/// `p (B, N)`, to be finished by the shared softmax row. Each row of `H` is
/// loaded once for up to `CB` classes (independent FMA chains).
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `wt` is `(N, K)`, `p` is `(B, N)`.
#[inline(always)]
pub(crate) unsafe fn logits<S: Simd>(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize) {
    let l = S::LANES;
    let body = k / l * l;
    for (i, prow) in p.chunks_exact_mut(n).enumerate() {
        let hrow = &h[i * k..(i + 1) * k];
        for c0 in (0..n).step_by(CB) {
            let cb = CB.min(n - c0);
            // SAFETY: loads cover LANES floats below `body <= k` of row i of
            // H and of rows c0 .. c0 + cb of W^T; the CPU runs S (caller).
            let sums = unsafe {
                let mut acc = [S::zero(); CB];
                for kv in (0..body).step_by(l) {
                    let hv = S::load(hrow.as_ptr().add(kv));
                    for (c, a) in acc.iter_mut().enumerate().take(cb) {
                        *a = S::fmadd(hv, S::load(wt.as_ptr().add((c0 + c) * k + kv)), *a);
                    }
                }
                acc.map(|a| S::hsum(a))
            };
            for (c, &sum) in sums.iter().enumerate().take(cb) {
                let wrow = &wt[(c0 + c) * k..(c0 + c + 1) * k];
                let tail: f32 = (body..k).map(|kk| hrow[kk] * wrow[kk]).sum();
                prow[c0 + c] = sum + tail + b[c0 + c];
            }
        }
    }
}

/// Vectors of a row handled together in `relu_backward_rows`.
const KB: usize = 4;

/// `dH[i, :] = (dZ[i, :] W^T) * [H[i, :] > 0]` for rows of `dH (B, K)`, with
/// `W^T (N, K)`. Each element is the chain `sum over c = 0, 1, .. of dZ[i, c]
/// W^T[c, k]` in registers, `KB` vectors of the row at a time.
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
    let body = k / (l * KB) * (l * KB);
    for (i, (dhrow, hrow)) in dh.chunks_exact_mut(k).zip(h.chunks_exact(k)).enumerate() {
        let g = &dz[i * n..(i + 1) * n];
        // SAFETY: every access covers LANES floats below `body <= k` of
        // this row of dH and H, and of each row of W^T; the CPU runs S.
        unsafe {
            for kv in (0..body).step_by(l * KB) {
                let mut acc = [S::zero(); KB];
                for (c, &gc) in g.iter().enumerate() {
                    let gv = S::splat(gc);
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = S::fmadd(gv, S::load(wt.as_ptr().add(c * k + kv + u * l)), *a);
                    }
                }
                for (u, &a) in acc.iter().enumerate() {
                    let at = kv + u * l;
                    S::store(dhrow.as_mut_ptr().add(at), S::keep_where_positive(S::load(hrow.as_ptr().add(at)), a));
                }
            }
        }
        for kk in body..k {
            let mut acc = 0f32;
            for (c, &gc) in g.iter().enumerate() {
                acc = gc.mul_add(wt[c * k + kk], acc);
            }
            dhrow[kk] = if hrow[kk] > 0.0 { acc } else { 0.0 };
        }
    }
}

/// `dW^T (N, K) := dZ^T H` for columns `k0 .. k0 + width` of `dW^T`, rows of
/// `dwt` given as `(N, width)`. Each element is the chain over the batch
/// rows in order, up to `CB` classes of one vector of columns in registers.
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `dz` is `(B, N)`, `dwt` is `(N, width)`.
#[inline(always)]
pub(crate) unsafe fn weight_grad_t<S: Simd>(dwt: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize) {
    let l = S::LANES;
    let width = dwt.len() / n.max(1);
    let batch = dz.len() / n.max(1);
    let body = width / l * l;
    for c0 in (0..n).step_by(CB) {
        let cb = CB.min(n - c0);
        // SAFETY: loads cover LANES floats of row i of H at columns k0 + kv
        // (kv + LANES <= body <= width), stores LANES floats of rows c0 + c
        // of dW^T below `body`; the CPU runs S (caller).
        unsafe {
            for kv in (0..body).step_by(l) {
                let mut acc = [S::zero(); CB];
                for i in 0..batch {
                    let hv = S::load(h.as_ptr().add(i * k + k0 + kv));
                    for (c, a) in acc.iter_mut().enumerate().take(cb) {
                        *a = S::fmadd(S::splat(dz[i * n + c0 + c]), hv, *a);
                    }
                }
                for (c, &a) in acc.iter().enumerate().take(cb) {
                    S::store(dwt.as_mut_ptr().add((c0 + c) * width + kv), a);
                }
            }
        }
        for c in c0..c0 + cb {
            for kv in body..width {
                let mut acc = 0f32;
                for i in 0..batch {
                    acc = dz[i * n + c].mul_add(h[i * k + k0 + kv], acc);
                }
                dwt[c * width + kv] = acc;
            }
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
