//! The scalar reference backend: plain loops, generic over [`Real`], written
//! for clarity first. Every other backend is tested against these functions,
//! and the gradient checks run them in `f64`.
//!
//! The loops are ordered so that the innermost one runs over a contiguous row
//! (the compiler vectorizes it without being asked), and work is split over
//! rayon by output rows only: each output element is produced by the same
//! sequential loop whatever the thread count, so results are bit-identical.

use crate::{Backend, Dims, Real, RmsProp, XentStats, CLIP};
use rayon::prelude::*;

/// Rows of `H` computed together in the layer-1 forward, so that each row of
/// `W` is loaded once per block rather than once per row.
const FORWARD_ROWS: usize = 4;
/// Rows of `dW` owned by one task in the weight-gradient products.
const DW_ROWS: usize = 16;
/// Elements per task in the RMSprop update.
pub(crate) const UPDATE_CHUNK: usize = 1 << 14;

/// The reference backend (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

/// `pixel / 255` for every pixel value, each rounded once to `T`.
pub fn pixel_table<T: Real>() -> [T; 256] {
    let scale = T::from_u8(255);
    std::array::from_fn(|p| T::from_u8(p as u8) / scale)
}

/// Panics unless `x` is a whole `(R, k)` matrix and every row index is < R.
/// (With `K = 0` there are no pixels to read and any row index is accepted.)
pub(crate) fn check_rows(x: &[u8], rows: &[u32], k: usize) {
    if k == 0 {
        return;
    }
    assert!(x.len().is_multiple_of(k), "x has {} elements, not a multiple of K = {k}", x.len());
    let r = x.len() / k;
    if let Some(bad) = rows.iter().find(|&&i| i as usize >= r) {
        panic!("row index {bad} out of range for a dataset of {r} rows");
    }
}

pub(crate) fn check_len(what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "{what} has {len} elements, expected {want}");
}

/// `H (B,N) := relu(X W + b)`, `X = x[rows] / 255`; see the crate docs.
pub fn dense_relu_forward_u8<T: Real>(h: &mut [T], x: &[u8], rows: &[u32], w: &[T], b: &[T], d: Dims) {
    let Dims { k, n } = d;
    check_rows(x, rows, k);
    check_len("H", h.len(), rows.len() * n);
    check_len("W", w.len(), k * n);
    check_len("b", b.len(), n);
    if n == 0 {
        return;
    }
    let lut = pixel_table::<T>();
    h.par_chunks_mut(FORWARD_ROWS * n).zip(rows.par_chunks(FORWARD_ROWS)).for_each(|(hb, rb)| {
        // hb: (rb.len(), N), accumulates X W for this block of rows.
        hb.fill(T::zero());
        for (kk, wrow) in w.chunks_exact(n).enumerate() {
            for (hrow, &r) in hb.chunks_exact_mut(n).zip(rb) {
                let xv = lut[usize::from(x[r as usize * k + kk])];
                for (acc, &wv) in hrow.iter_mut().zip(wrow) {
                    *acc = *acc + xv * wv;
                }
            }
        }
        // Bias after the product, as Keras computes `x @ W + b`; NaN propagates.
        for hrow in hb.chunks_exact_mut(n) {
            for (v, &bv) in hrow.iter_mut().zip(b) {
                let z = *v + bv;
                *v = if z < T::zero() { T::zero() } else { z };
            }
        }
    });
}

/// `P := softmax(H W + b)`, loss and `dZ := (P - onehot) / B`; see the crate docs.
#[allow(clippy::too_many_arguments)]
pub fn dense_softmax_xent<T: Real>(
    p: &mut [T],
    dz: &mut [T],
    h: &[T],
    w: &[T],
    b: &[T],
    labels: &[u8],
    rows: &[u32],
    d: Dims,
) -> XentStats<T> {
    let Dims { k, n } = d;
    let batch = rows.len();
    check_len("H", h.len(), batch * k);
    check_len("W", w.len(), k * n);
    check_len("b", b.len(), n);
    check_len("P", p.len(), batch * n);
    check_len("dZ", dz.len(), batch * n);
    for (i, prow) in p.chunks_exact_mut(n.max(1)).enumerate() {
        // Logits X W, then + b, in the order Keras computes them.
        prow.fill(T::zero());
        for (&hv, wrow) in h[i * k..(i + 1) * k].iter().zip(w.chunks_exact(n.max(1))) {
            for (acc, &wv) in prow.iter_mut().zip(wrow) {
                *acc = *acc + hv * wv;
            }
        }
        for (v, &bv) in prow.iter_mut().zip(b) {
            *v = *v + bv;
        }
    }
    softmax_xent_rows(p, dz, labels, rows, n)
}

/// Finishes [`dense_softmax_xent`] once `p (B, N)` holds the logits (bias
/// added): every row through [`softmax_xent_row`], with `y_i =
/// labels[rows[i]]`. Shared by every backend.
pub fn softmax_xent_rows<T: Real>(p: &mut [T], dz: &mut [T], labels: &[u8], rows: &[u32], n: usize) -> XentStats<T> {
    let batch_t = T::from_f64(rows.len() as f64);
    let mut loss_sum = T::zero();
    let mut correct = 0;
    for (i, &r) in rows.iter().enumerate() {
        let y = usize::from(labels[r as usize]);
        assert!(y < n, "label {y} of row {r} is not below N = {n}");
        let (loss, hit) = softmax_xent_row(&mut p[i * n..(i + 1) * n], &mut dz[i * n..(i + 1) * n], y, batch_t);
        loss_sum = loss_sum + loss;
        correct += usize::from(hit);
    }
    XentStats { loss_sum, correct }
}

/// Turns one row of logits (bias already added) into probabilities in place,
/// writes its logit gradient `(p - onehot(y)) / batch` into `dz`, and returns
/// the clipped cross-entropy `-ln clip(p[y])` and whether `argmax p == y`.
/// Shared by every backend, so the softmax itself is computed identically.
pub fn softmax_xent_row<T: Real>(p: &mut [T], dz: &mut [T], y: usize, batch: T) -> (T, bool) {
    let (lo, hi) = (T::from_f64(CLIP), T::one() - T::from_f64(CLIP));
    let max = p.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let mut sum = T::zero();
    for v in p.iter_mut() {
        *v = (*v - max).exp();
        sum = sum + *v;
    }
    for v in p.iter_mut() {
        *v = *v / sum;
    }
    // Clip with comparisons, not `max`/`min`, so that a NaN probability
    // stays NaN (as in TensorFlow) instead of becoming a finite loss.
    let py = p[y];
    let clipped = if py < lo {
        lo
    } else if py > hi {
        hi
    } else {
        py
    };
    for (j, (g, &pv)) in dz.iter_mut().zip(p.iter()).enumerate() {
        let onehot = if j == y { T::one() } else { T::zero() };
        *g = (pv - onehot) / batch;
    }
    (-clipped.ln(), argmax(p) == y)
}

/// Index of the first maximum of `v` (0 for an empty slice; NaN never wins).
pub fn argmax<T: Real>(v: &[T]) -> usize {
    let mut best = 0;
    for (j, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = j;
        }
    }
    best
}

/// `db (N) := sum_i dZ[i, :]`, summed in row order.
pub(crate) fn column_sums<T: Real>(db: &mut [T], dz: &[T], n: usize) {
    db.fill(T::zero());
    for dzrow in dz.chunks_exact(n) {
        for (acc, &g) in db.iter_mut().zip(dzrow) {
            *acc = *acc + g;
        }
    }
}

/// `dW (K,N) := A^T dZ` where row `i` of `A` (length K) is `a_row(i)`; rows of
/// `dW` are split over threads, each summed over `i` in order.
fn weight_grad<T: Real, F>(dw: &mut [T], dz: &[T], batch: usize, d: Dims, a_at: F)
where
    F: Fn(usize, usize) -> T + Sync,
{
    let Dims { k: _, n } = d;
    dw.par_chunks_mut(DW_ROWS * n).enumerate().for_each(|(blk, dwb)| {
        // dwb: rows k0 .. k0 + dwb.len() / n of dW.
        let k0 = blk * DW_ROWS;
        dwb.fill(T::zero());
        for (i, dzrow) in dz.chunks_exact(n).enumerate().take(batch) {
            for (kk, dwrow) in dwb.chunks_exact_mut(n).enumerate() {
                let av = a_at(i, k0 + kk);
                for (acc, &g) in dwrow.iter_mut().zip(dzrow) {
                    *acc = *acc + av * g;
                }
            }
        }
    });
}

/// `dW := H^T dZ`, `db := column sums of dZ`; see the crate docs.
pub fn dense_backward<T: Real>(dw: &mut [T], db: &mut [T], h: &[T], dz: &[T], d: Dims) {
    let Dims { k, n } = d;
    check_len("dW", dw.len(), k * n);
    check_len("db", db.len(), n);
    if n == 0 {
        return;
    }
    assert!(dz.len().is_multiple_of(n), "dZ has {} elements, not a multiple of N = {n}", dz.len());
    let batch = dz.len() / n;
    check_len("H", h.len(), batch * k);
    column_sums(db, dz, n);
    weight_grad(dw, dz, batch, d, |i, kk| h[i * k + kk]);
}

/// `dW := X^T dZ` with `X = x[rows] / 255`, `db := column sums of dZ`.
pub fn dense_backward_u8<T: Real>(dw: &mut [T], db: &mut [T], x: &[u8], rows: &[u32], dz: &[T], d: Dims) {
    let Dims { k, n } = d;
    check_rows(x, rows, k);
    check_len("dW", dw.len(), k * n);
    check_len("db", db.len(), n);
    check_len("dZ", dz.len(), rows.len() * n);
    if n == 0 {
        return;
    }
    let lut = pixel_table::<T>();
    column_sums(db, dz, n);
    weight_grad(dw, dz, rows.len(), d, |i, kk| lut[usize::from(x[rows[i] as usize * k + kk])]);
}

/// `dH (B,K) := (dZ W^T) * [H > 0]`; see the crate docs.
pub fn relu_backward_input<T: Real>(dh: &mut [T], dz: &[T], w: &[T], h: &[T], d: Dims) {
    let Dims { k, n } = d;
    check_len("W", w.len(), k * n);
    check_len("dH", dh.len(), h.len());
    if k == 0 {
        return;
    }
    let batch = h.len() / k;
    check_len("H", h.len(), batch * k);
    check_len("dZ", dz.len(), batch * n);
    if n == 0 {
        dh.fill(T::zero());
        return;
    }
    dh.par_chunks_mut(k).zip(h.par_chunks(k)).enumerate().for_each(|(i, (dhrow, hrow))| {
        let dzrow = &dz[i * n..(i + 1) * n];
        for ((g, &hv), wrow) in dhrow.iter_mut().zip(hrow).zip(w.chunks_exact(n)) {
            let mut acc = T::zero();
            for (&a, &wv) in dzrow.iter().zip(wrow) {
                acc = acc + a * wv;
            }
            *g = if hv > T::zero() { acc } else { T::zero() };
        }
    });
}

/// One RMSprop step, exactly as Keras 3 computes it:
/// `v = rho * v + (1 - rho) * g^2; w = w - (lr * g) / sqrt(v + eps)`.
pub fn rmsprop<T: Real>(w: &mut [T], g: &[T], v: &mut [T], opt: RmsProp) {
    check_len("g", g.len(), w.len());
    check_len("v", v.len(), w.len());
    w.par_chunks_mut(UPDATE_CHUNK)
        .zip(g.par_chunks(UPDATE_CHUNK))
        .zip(v.par_chunks_mut(UPDATE_CHUNK))
        .for_each(|((w, g), v)| rmsprop_serial(w, g, v, opt));
}

/// [`rmsprop`] on one chunk, on the calling thread.
pub fn rmsprop_serial<T: Real>(w: &mut [T], g: &[T], v: &mut [T], opt: RmsProp) {
    let (lr, rho, decay, eps) = opt.coefficients::<T>();
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = rho * *v + decay * (g * g);
        *w = *w - (lr * g) / (*v + eps).sqrt();
    }
}

impl<T: Real> Backend<T> for Scalar {
    fn name(&self) -> &'static str {
        "scalar"
    }
    fn dense_relu_forward_u8(&self, h: &mut [T], x: &[u8], rows: &[u32], w: &[T], b: &[T], d: Dims) {
        dense_relu_forward_u8(h, x, rows, w, b, d);
    }
    fn dense_softmax_xent(
        &self,
        p: &mut [T],
        dz: &mut [T],
        h: &[T],
        w: &[T],
        b: &[T],
        labels: &[u8],
        rows: &[u32],
        d: Dims,
    ) -> XentStats<T> {
        dense_softmax_xent(p, dz, h, w, b, labels, rows, d)
    }
    fn dense_backward(&self, dw: &mut [T], db: &mut [T], h: &[T], dz: &[T], d: Dims) {
        dense_backward(dw, db, h, dz, d);
    }
    fn dense_backward_u8(&self, dw: &mut [T], db: &mut [T], x: &[u8], rows: &[u32], dz: &[T], d: Dims) {
        dense_backward_u8(dw, db, x, rows, dz, d);
    }
    fn relu_backward_input(&self, dh: &mut [T], dz: &[T], w: &[T], h: &[T], d: Dims) {
        relu_backward_input(dh, dz, w, h, d);
    }
    fn rmsprop(&self, w: &mut [T], g: &[T], v: &mut [T], opt: RmsProp) {
        rmsprop(w, g, v, opt);
    }
}
