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
        let mut c0 = 0;
        while c0 < n {
            // Ten classes at once when there are ten left (the MNIST case),
            // else one at a time; either way each logit is the same chain.
            let cb = if n - c0 >= CB { CB } else { 1 };
            let mut sums = [0f32; CB];
            // SAFETY: loads cover LANES floats below `body <= k` of row i of
            // H and of rows c0 .. c0 + cb of W^T; the CPU runs S (caller).
            unsafe {
                if cb == CB {
                    dots::<S, CB>(&mut sums, hrow, &wt[c0 * k..], k, body);
                } else {
                    dots::<S, 1>(&mut sums[..1], hrow, &wt[c0 * k..], k, body);
                }
            }
            for (c, &sum) in sums.iter().enumerate().take(cb) {
                let wrow = &wt[(c0 + c) * k..(c0 + c + 1) * k];
                let tail: f32 = (body..k).map(|kk| hrow[kk] * wrow[kk]).sum();
                prow[c0 + c] = sum + tail + b[c0 + c];
            }
            c0 += cb;
        }
    }
}

/// `sums[c] = dot(h[..body], wt[c * k ..][..body])` for `C` rows of `wt`,
/// with `C` accumulators in registers (one load of `h` per vector).
///
/// # Safety
/// The CPU runs `S`; `body <= k` is a multiple of `LANES`, `h` holds `body`
/// floats and `wt` at least `(C - 1) * k + body`.
#[inline(always)]
unsafe fn dots<S: Simd, const C: usize>(sums: &mut [f32], h: &[f32], wt: &[f32], k: usize, body: usize) {
    let l = S::LANES;
    assert!(h.len() >= body && wt.len() >= (C - 1) * k + body && sums.len() >= C);
    // SAFETY: the loads stay below the lengths checked above; S is present.
    unsafe {
        let mut acc = [S::zero(); C];
        for kv in (0..body).step_by(l) {
            let hv = S::load(h.as_ptr().add(kv));
            for (c, a) in acc.iter_mut().enumerate() {
                *a = S::fmadd(hv, S::load(wt.as_ptr().add(c * k + kv)), *a);
            }
        }
        for (s, a) in sums.iter_mut().zip(acc) {
            *s = S::hsum(a);
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
    let mut c0 = 0;
    while c0 < n {
        let cb = if n - c0 >= CB { CB } else { 1 };
        // SAFETY: see `grad_columns`; the CPU runs S (caller).
        unsafe {
            if cb == CB {
                grad_columns::<S, CB>(dwt, c0, k0, h, dz, (k, n, width, body, batch));
            } else {
                grad_columns::<S, 1>(dwt, c0, k0, h, dz, (k, n, width, body, batch));
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
        c0 += cb;
    }
}

/// Classes `c0 .. c0 + C` of [`weight_grad_t`], vector columns below `body`.
///
/// # Safety
/// The CPU runs `S`; shapes as in [`weight_grad_t`], `body <= width` a
/// multiple of `LANES`.
#[inline(always)]
unsafe fn grad_columns<S: Simd, const C: usize>(
    dwt: &mut [f32],
    c0: usize,
    k0: usize,
    h: &[f32],
    dz: &[f32],
    (k, n, width, body, batch): (usize, usize, usize, usize, usize),
) {
    let l = S::LANES;
    assert!(dwt.len() >= (c0 + C) * width && dz.len() >= batch * n && h.len() >= batch * k);
    assert!(k0 + body <= k && c0 + C <= n);
    // SAFETY: loads cover LANES floats of row i of H at columns k0 + kv <
    // k0 + body <= k, stores LANES floats of rows c0 + c of dW^T below
    // `body <= width` (all checked above); S is present.
    unsafe {
        for kv in (0..body).step_by(l) {
            let mut acc = [S::zero(); C];
            for i in 0..batch {
                let hv = S::load(h.as_ptr().add(i * k + k0 + kv));
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = S::fmadd(S::splat(*dz.get_unchecked(i * n + c0 + c)), hv, *a);
                }
            }
            for (c, &a) in acc.iter().enumerate() {
                S::store(dwt.as_mut_ptr().add((c0 + c) * width + kv), a);
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
    /// Whether `lr * 0` is `+0` (a finite `lr >= +0`).
    zero_step: bool,
}

impl<V: Copy> RmsPropV<V> {
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    pub(crate) unsafe fn new<S: Simd<V = V>>(opt: RmsProp) -> Self {
        let (lr, rho, decay, eps) = opt.coefficients::<f32>();
        // SAFETY: the CPU runs S (caller).
        unsafe {
            RmsPropV {
                lr: S::splat(lr),
                rho: S::splat(rho),
                decay: S::splat(decay),
                eps: S::splat(eps),
                zero_step: (lr * 0.0).to_bits() == 0,
            }
        }
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

/// [`rmsprop_lanes`] with a gradient of `+0` in every lane, bit for bit,
/// but without touching `w` when that cannot change it: `v := rho v + 0`,
/// and then the step `lr * 0 / sqrt(v + eps)` is `+0` wherever `lr * 0` is
/// `+0` and `v + eps > 0`, and `w - (+0)` is `w` (also for `-0`, infinities
/// and quiet NaNs). Otherwise, the full formula runs. This is the update of
/// a `W1` row whose pixel is dark in the whole batch: about a third of the
/// rows of an MNIST batch, which so skip their `sqrt`, `div` and the memory
/// traffic of their weights.
///
/// # Safety
/// As [`rmsprop_lanes`].
#[inline(always)]
pub(crate) unsafe fn rmsprop_lanes_no_grad<S: Simd>(w: *mut f32, v: *mut f32, c: RmsPropV<S::V>) {
    // SAFETY: forwarded contract.
    unsafe {
        let g = S::zero();
        let vn = S::add(S::mul(c.rho, S::load(v)), S::mul(c.decay, S::mul(g, g)));
        S::store(v, vn);
        let d = S::add(vn, c.eps);
        if c.zero_step && S::all_positive(d) {
            return;
        }
        S::store(w, S::sub(S::load(w), S::div(S::mul(c.lr, g), S::sqrt(d))));
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
