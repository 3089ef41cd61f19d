//! Helpers every backend shares: shape checks, the `u8 -> f32` pixel table,
//! the softmax cross-entropy row, column sums and the activation passes.
//! They live here, not in the scalar reference, so that the reference stays
//! a backend like the others and nothing the fast paths need is "borrowed"
//! from it. Each helper is a single fixed sequence of roundings, so every
//! backend that calls it gets the same bits.

use crate::{Activation, Applied, Real, XentStats, CLIP};

/// Elements per task in the flat elementwise passes (the optimizer update).
pub(crate) const UPDATE_CHUNK: usize = 1 << 14;

/// `pixel / 255` for every pixel value, each rounded once to `T` (exactly
/// Keras's `images.astype("float32") / 255`).
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

/// Panics with a message naming `what` unless `len == want`.
pub(crate) fn check_len(what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "{what} has {len} elements, expected {want}");
}

/// `db (N) := sum_i dZ[i, :]`, summed in row order.
pub(crate) fn column_sums<T: Real>(db: &mut [T], dz: &[T], n: usize) {
    // Also on rayon's worker threads (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
    db.fill(T::zero());
    for dzrow in dz.chunks_exact(n.max(1)) {
        for (acc, &g) in db.iter_mut().zip(dzrow) {
            *acc = *acc + g;
        }
    }
}

/// Finishes a softmax cross-entropy once `p (B, N)` holds the logits (bias
/// added): every row through [`softmax_xent_row`], with `y_i =
/// labels[rows[i]]`, losses summed in row order.
pub fn softmax_xent_rows<T: Real>(p: &mut [T], dz: &mut [T], labels: &[u8], rows: &[u32], n: usize) -> XentStats<T> {
    // Also on rayon's worker threads (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
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

/// The batch of an inference output layer, `B = P.len() / N`, with the
/// lengths of `P (B, N)`, `A (B, K)` and `b (N)` checked; `None` when there
/// are no classes (`N = 0`: nothing to compute).
pub fn output_rows(p: usize, a: usize, b: usize, d: crate::Dims) -> Option<usize> {
    let crate::Dims { k, n } = d;
    if n == 0 {
        return None;
    }
    let batch = p / n;
    check_len("P", p, batch * n);
    check_len("A", a, batch * k);
    check_len("b", b, n);
    Some(batch)
}

/// Turns every row of `p (B, N)`, logits with the bias added, into
/// probabilities in place ([`softmax_row`]): the forward's end without a
/// loss, for inference.
pub fn softmax_rows<T: Real>(p: &mut [T], n: usize) {
    for row in p.chunks_exact_mut(n.max(1)) {
        softmax_row(row);
    }
}

/// One row of logits into probabilities in place: `exp(z - max z)`, each
/// divided by their sum. Training's and inference's softmax are this one
/// function, so they give the same bits.
pub fn softmax_row<T: Real>(p: &mut [T]) {
    // exp underflows for logits far below the row's maximum (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
    let max = p.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let mut sum = T::zero();
    for v in p.iter_mut() {
        *v = (*v - max).exp();
        sum = sum + *v;
    }
    for v in p.iter_mut() {
        *v = *v / sum;
    }
}

/// Turns one row of logits (bias already added) into probabilities in place,
/// writes its logit gradient `(p - onehot(y)) / batch` into `dz`, and returns
/// the clipped cross-entropy `-ln clip(p[y])` and whether `argmax p == y`.
pub fn softmax_xent_row<T: Real>(p: &mut [T], dz: &mut [T], y: usize, batch: T) -> (T, bool) {
    // The whole row flushed, `dz`'s division too (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
    let (lo, hi) = (T::from_f64(CLIP), T::one() - T::from_f64(CLIP));
    softmax_row(p);
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

/// `h := act(h)` elementwise for the activations no kernel epilogue applies
/// (sigmoid, tanh: [`Real::sigmoid`], [`Real::tanh_act`], identical on every
/// backend); a no-op for `Linear` and `Relu`, which the epilogues apply
/// themselves. Inlined into each instruction set's `Isa::activate`, where
/// the loop compiles to that set's vectors.
#[inline(always)]
pub(crate) fn activate_rest<T: Real>(h: &mut [T], act: Activation) {
    // Also on rayon's worker threads (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
    if act.applied() == Applied::Elementwise {
        // One loop per activation, so that each is a loop without a branch.
        match act {
            Activation::Sigmoid => h.iter_mut().for_each(|v| *v = Activation::Sigmoid.apply(*v)),
            Activation::Tanh => h.iter_mut().for_each(|v| *v = Activation::Tanh.apply(*v)),
            _ => h.iter_mut().for_each(|v| *v = act.apply(*v)),
        }
    }
}

/// `da := act'(a) * da` elementwise, `a` the activation's output (see
/// [`Activation::backward`]); ReLU's mask included.
pub(crate) fn activation_backward<T: Real>(da: &mut [T], a: &[T], act: Activation) {
    // Also on rayon's worker threads (see `denormals`).
    let _flushed = crate::denormals::Flushed::new();
    if act.applied() == Applied::Identity {
        return;
    }
    for (g, &y) in da.iter_mut().zip(a) {
        *g = act.backward(y, *g);
    }
}
