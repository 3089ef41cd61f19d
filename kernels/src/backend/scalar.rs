//! The scalar reference backend: plain loops, generic over [`Real`], written
//! for clarity first. Every other backend is tested against these functions,
//! and the gradient checks run them in `f64`.
//!
//! The loops are ordered so that the innermost one runs over a contiguous row
//! (the compiler vectorizes it without being asked), and work is split over
//! rayon by output rows only: each output element is produced by the same
//! sequential loop whatever the thread count, so results are bit-identical.
//! Every kernel is row-major here (the panel width is `N`), so the hidden
//! and output ops are the same functions.

use crate::denormals::Flushed;
use crate::optim::update_serial;
use crate::par;
use crate::shared::{
    check_len, check_rows, column_sums, output_rows, pixel_table, softmax_rows, softmax_xent_rows, UPDATE_CHUNK,
};
use crate::{
    Activation, Applied, Backend, Derivative, Dims, Grads, Layer1Path, Real, Rows, Update, Weights, XentStats,
};

/// Rows of `H` computed together in the forward products, so that each row
/// of `W` is loaded once per block rather than once per row.
const FORWARD_ROWS: usize = 4;
/// Rows of `dW` owned by one task in the weight-gradient products.
const DW_ROWS: usize = 16;

/// The reference backend (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

/// `H (B,N) := act(A W + b)` where element `(i, k)` of `A` is `a_at(i, k)`
/// for `i < batch`: the product in `k` order, then the bias, then the
/// activation, as Keras computes `act(x @ W + b)`.
fn forward<T: Real, F>(h: &mut [T], batch: usize, w: Weights<'_, T>, d: Dims, act: Activation, a_at: F)
where
    F: Fn(usize, usize) -> T + Sync,
{
    let (Weights { kernel: w, bias: b }, Dims { k, n }) = (w, d);
    check_len("H", h.len(), batch * n);
    check_len("W", w.len(), k * n);
    check_len("b", b.len(), n);
    assert!(act.applied() != Applied::WithLoss, "softmax is fused with the cross-entropy (output_softmax_xent)");
    if n == 0 {
        return;
    }
    par::run(h.chunks_mut(FORWARD_ROWS * n).enumerate().collect(), |(blk, hb)| {
        let _flushed = Flushed::new();
        // hb: (rows of this block, N), accumulates A W.
        let i0 = blk * FORWARD_ROWS;
        hb.fill(T::zero());
        for (kk, wrow) in w.chunks_exact(n).enumerate() {
            for (r, hrow) in hb.chunks_exact_mut(n).enumerate() {
                let av = a_at(i0 + r, kk);
                for (acc, &wv) in hrow.iter_mut().zip(wrow) {
                    *acc = *acc + av * wv;
                }
            }
        }
        // Bias after the product; NaN propagates.
        for hrow in hb.chunks_exact_mut(n) {
            for (v, &bv) in hrow.iter_mut().zip(b) {
                *v = act.apply(*v + bv);
            }
        }
    });
}

/// `H (B,N) := act(X W + b)`, `X = x[rows] / 255`; see the crate docs.
pub fn input_forward<T: Real>(h: &mut [T], x: Rows<'_, u8>, w: Weights<'_, T>, act: Activation, d: Dims) {
    let Rows { data: x, rows } = x;
    check_rows(x, rows, d.k);
    let lut = pixel_table::<T>();
    let k = d.k;
    forward(h, rows.len(), w, d, act, |i, kk| lut[usize::from(x[rows[i] as usize * k + kk])]);
}

/// `H (B,N) := act(A W + b)`; see the crate docs.
pub fn hidden_forward<T: Real>(h: &mut [T], a: &[T], w: Weights<'_, T>, act: Activation, d: Dims) {
    let batch = a.len().checked_div(d.k).unwrap_or(h.len() / d.n.max(1));
    check_len("A", a.len(), batch * d.k);
    forward(h, batch, w, d, act, |i, kk| a[i * d.k + kk]);
}

/// `P := softmax(A W + b)`, loss and `dZ := (P - onehot) / B`; see the crate docs.
pub fn output_softmax_xent<T: Real>(
    p: &mut [T],
    dz: &mut [T],
    a: &[T],
    w: Weights<'_, T>,
    labels: Rows<'_, u8>,
    d: Dims,
) -> XentStats<T> {
    let Dims { k, n } = d;
    let batch = labels.len();
    check_len("A", a.len(), batch * k);
    check_len("P", p.len(), batch * n);
    check_len("dZ", dz.len(), batch * n);
    forward(p, batch, w, d, Activation::Linear, |i, kk| a[i * k + kk]);
    softmax_xent_rows(p, dz, labels.data, labels.rows, n)
}

/// `P (B,N) := softmax(A W + b)`: [`output_softmax_xent`]'s `P`, without
/// labels (inference).
pub fn output_softmax<T: Real>(p: &mut [T], a: &[T], w: Weights<'_, T>, d: Dims) {
    let Dims { k, n } = d;
    let Some(batch) = output_rows(p.len(), a.len(), w.bias.len(), d) else { return };
    forward(p, batch, w, d, Activation::Linear, |i, kk| a[i * k + kk]);
    softmax_rows(p, n);
}

/// `dW (K,N) := A^T dZ` where row `i` of `A` (length K) is `a_at(i, ..)`; rows
/// of `dW` are split over threads, each summed over `i` in order.
fn weight_grad<T: Real, F>(dw: &mut [T], dz: &[T], batch: usize, d: Dims, a_at: F)
where
    F: Fn(usize, usize) -> T + Sync,
{
    let Dims { k: _, n } = d;
    par::run(dw.chunks_mut(DW_ROWS * n).enumerate().collect(), |(blk, dwb)| {
        let _flushed = Flushed::new();
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

/// `dW := A^T dZ`, `db := column sums of dZ`; see the crate docs.
pub fn dense_backward<T: Real>(g: Grads<'_, T>, a: &[T], dz: &[T], d: Dims) {
    let Grads { kernel: dw, bias: db } = g;
    let Dims { k, n } = d;
    check_len("dW", dw.len(), k * n);
    check_len("db", db.len(), n);
    if n == 0 {
        return;
    }
    assert!(dz.len().is_multiple_of(n), "dZ has {} elements, not a multiple of N = {n}", dz.len());
    let batch = dz.len() / n;
    check_len("A", a.len(), batch * k);
    column_sums(db, dz, n);
    weight_grad(dw, dz, batch, d, |i, kk| a[i * k + kk]);
}

/// `dW := X^T dZ` with `X = x[rows] / 255`, `db := column sums of dZ`.
pub fn input_backward<T: Real>(g: Grads<'_, T>, x: Rows<'_, u8>, dz: &[T], d: Dims) {
    let (Grads { kernel: dw, bias: db }, Rows { data: x, rows }) = (g, x);
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

/// `dA (B,K) := (dZ W^T) * act'(A)`; see the crate docs.
pub fn backward_input<T: Real>(da: &mut [T], dz: &[T], w: &[T], below: Derivative<'_, T>, d: Dims) {
    let (a, Dims { k, n }) = (below.out, d);
    check_len("W", w.len(), k * n);
    check_len("dA", da.len(), a.len());
    if k == 0 {
        return;
    }
    let batch = a.len() / k;
    check_len("A", a.len(), batch * k);
    check_len("dZ", dz.len(), batch * n);
    if n == 0 {
        da.fill(T::zero());
        return;
    }
    par::run(da.chunks_mut(k).enumerate().collect(), |(i, darow)| {
        let _flushed = Flushed::new();
        let dzrow = &dz[i * n..(i + 1) * n];
        for (g, wrow) in darow.iter_mut().zip(w.chunks_exact(n.max(1))) {
            let mut acc = T::zero();
            for (&gz, &wv) in dzrow.iter().zip(wrow) {
                acc = acc + gz * wv;
            }
            *g = acc;
        }
        below.apply(darow, i * k);
    });
}

/// One optimizer step of `u`'s weights with gradient `g`, exactly as
/// Keras 3 computes it (see `update_serial`), in parallel chunks.
pub fn update<T: Real>(u: Update<'_, T>, g: &[T]) {
    check_len("g", g.len(), u.len());
    par::run(u.into_chunks(UPDATE_CHUNK).into_iter().zip(g.chunks(UPDATE_CHUNK)).collect(), |(u, g)| {
        let _flushed = Flushed::new();
        update_serial(u, g)
    });
}

/// Applies a fused update after the gradient `dw` was stored.
fn apply<T: Real>(dw: &[T], u: Option<Update<'_, T>>) {
    if let Some(u) = u {
        update(u, dw);
    }
}

impl<T: Real> Backend<T> for Scalar {
    fn name(&self) -> &'static str {
        "scalar"
    }
    fn input_forward(&self, h: &mut [T], x: Rows<'_, u8>, w: Weights<'_, T>, act: Activation, _: Layer1Path, d: Dims) {
        let _flushed = Flushed::new();
        input_forward(h, x, w, act, d);
    }
    fn input_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        x: Rows<'_, u8>,
        dz: &[T],
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        input_backward(Grads { kernel: &mut *dw, bias: db }, x, dz, d);
        apply(dw, update);
    }
    fn hidden_forward(&self, h: &mut [T], a: &[T], w: Weights<'_, T>, act: Activation, _: Layer1Path, d: Dims) {
        let _flushed = Flushed::new();
        hidden_forward(h, a, w, act, d);
    }
    fn hidden_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        a: &[T],
        dz: &[T],
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        dense_backward(Grads { kernel: &mut *dw, bias: db }, a, dz, d);
        apply(dw, update);
    }
    fn hidden_backward_input(&self, da: &mut [T], dz: &[T], w: &[T], below: Derivative<'_, T>, _: Layer1Path, d: Dims) {
        let _flushed = Flushed::new();
        backward_input(da, dz, w, below, d);
    }
    fn output_softmax_xent(
        &self,
        p: &mut [T],
        dz: &mut [T],
        a: &[T],
        w: Weights<'_, T>,
        labels: Rows<'_, u8>,
        d: Dims,
    ) -> XentStats<T> {
        let _flushed = Flushed::new();
        output_softmax_xent(p, dz, a, w, labels, d)
    }
    fn output_softmax(&self, p: &mut [T], a: &[T], w: Weights<'_, T>, d: Dims) {
        let _flushed = Flushed::new();
        output_softmax(p, a, w, d)
    }
    fn output_backward(&self, g: Grads<'_, T>, a: &[T], dz: &[T], d: Dims) {
        let _flushed = Flushed::new();
        dense_backward(g, a, dz, d);
    }
    fn output_backward_input(&self, da: &mut [T], dz: &[T], w: &[T], below: Derivative<'_, T>, d: Dims) {
        let _flushed = Flushed::new();
        backward_input(da, dz, w, below, d);
    }
    fn update(&self, u: Update<'_, T>, g: &[T]) {
        let _flushed = Flushed::new();
        update(u, g);
    }
}
