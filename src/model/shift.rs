//! f32 features shifted by a constant per column, so that layer 1 skips
//! what most rows share.
//!
//! Standardized MNIST (`(x - mean) / std` per pixel) has no zeros: every
//! dark pixel of column `j` became the same value `c_j`. With `X = S + 1
//! c^T`, where `S` is zero wherever `x_ij = c_j` (81% of it there),
//!
//! ```text
//! X W + b   = S W + (b + c^T W)
//! X^T dZ    = S^T dZ + c (1^T dZ) = S^T dZ + c db^T
//! ```
//!
//! so layer 1 runs its two products on `S` with the sparse kernels (as on
//! pixels), its bias taken as `b + c^T W` (one row of products a step) and
//! its weight gradient corrected by the outer product `c db^T`. The
//! parameters, their gradients and the loss are those of `X`, up to the
//! rounding of a different order of additions. Offsets are taken only when
//! they leave at most half of the features non-zero and make more of them
//! zero than there are already; otherwise nothing changes, bit for bit.

use super::arena::Slot;
use kiln_kernels::{AlignedVec, Backend, Dims, Layer1Path, Real, Weights};

/// At most this fraction of the shifted features non-zero, or no shift:
/// the sparse kernels' own threshold (`SPARSE_MAX_DENSITY` in the kernels).
const MAX_DENSITY: f64 = 0.5;

/// Layer 1's input offsets and the bias they make (see the module docs).
#[derive(Debug)]
pub(super) struct Shift<T: Real> {
    /// `c (D)`.
    offsets: AlignedVec<T>,
    /// `b + c^T W` of the current weights (`Shift::refresh`).
    bias: AlignedVec<T>,
    /// Scratch for `c^T W`, `(1, N)`.
    row: AlignedVec<T>,
    /// `N` zeros: the bias of that product.
    zeros: AlignedVec<T>,
}

impl<T: Real> Shift<T> {
    /// The offsets for the features `x` (`(R, d)`, row-major) with `n`
    /// units in layer 1: per column the value most entries share among
    /// its minimum, its maximum and 0; `None` when they would not leave at
    /// most half of `x` non-zero or would not add zeros.
    pub(super) fn for_features(x: &[f32], d: usize, n: usize) -> Option<Self> {
        let rows = x.len().checked_div(d)?;
        if rows == 0 {
            return None;
        }
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        for row in x.chunks_exact(d) {
            for ((l, h), &v) in lo.iter_mut().zip(&mut hi).zip(row) {
                *l = l.min(v);
                *h = h.max(v);
            }
        }
        // Per column: how many entries equal its minimum, maximum and 0.
        let mut counts = vec![[0usize; 3]; d];
        for row in x.chunks_exact(d) {
            for (j, &v) in row.iter().enumerate() {
                let c = &mut counts[j];
                c[0] += usize::from(v == lo[j]);
                c[1] += usize::from(v == hi[j]);
                c[2] += usize::from(v == 0.0);
            }
        }
        let (mut offsets, mut zeros_after, mut zeros_before) = (Vec::with_capacity(d), 0, 0);
        for (j, c) in counts.iter().enumerate() {
            // 0 wins ties: a column already mostly zero stays as it is.
            let (value, count) = [(0.0, c[2]), (lo[j], c[0]), (hi[j], c[1])]
                .into_iter()
                .fold((0.0, c[2]), |best, cand| if cand.1 > best.1 { cand } else { best });
            offsets.push(T::from_f64(f64::from(value)));
            zeros_after += count;
            zeros_before += c[2];
        }
        let total = (rows * d) as f64;
        let dense_after = 1.0 - zeros_after as f64 / total;
        if dense_after > MAX_DENSITY || zeros_after <= zeros_before {
            return None;
        }
        Some(Shift {
            offsets: AlignedVec::from_slice(&offsets),
            bias: AlignedVec::zeroed(n),
            row: AlignedVec::zeroed(n),
            zeros: AlignedVec::zeroed(n),
        })
    }

    /// `c (D)`.
    pub(super) fn offsets(&self) -> &[T] {
        &self.offsets
    }

    /// The bias layer 1 adds to `S W`: `b + c^T W` of its kernel `W` (in
    /// `s`'s layout, in the arena `w`) and bias `b`, computed again from
    /// the current weights.
    pub(super) fn refresh(&mut self, be: &dyn Backend<T>, s: &Slot, w: &[T], path: Layer1Path) {
        let kernel = Weights::new(&w[s.kernel.clone()], &self.zeros);
        let row = &mut self.row[..s.dims.n];
        be.hidden_forward(row, &self.offsets, kernel, kiln_kernels::Activation::Linear, path, s.dims);
        for ((out, &cw), &b) in self.bias.iter_mut().zip(row.iter()).zip(&w[s.bias.clone()]) {
            *out = b + cw;
        }
    }

    /// The bias of the last [`Shift::refresh`].
    pub(super) fn bias(&self) -> &[T] {
        &self.bias
    }
}

/// `S := X - 1 c^T` in place, for rows of `d` gathered features.
pub(super) fn subtract<T: Real>(rows: &mut [T], offsets: &[T]) {
    for row in rows.chunks_exact_mut(offsets.len().max(1)) {
        for (v, &c) in row.iter_mut().zip(offsets) {
            *v = *v - c;
        }
    }
}

/// `dW += c db^T`, `dW` in `s`'s layout: the weight gradient of `X` from
/// that of `S`.
pub(super) fn correct_gradient<T: Real>(dw: &mut [T], s: &Slot, offsets: &[T], db: &[T]) {
    let (Dims { k, n }, nr) = (s.dims, s.layout.nr);
    assert!(offsets.len() == k && db.len() == n && dw.len() == s.layout.len());
    // Panel p holds columns p * nr .., a row of nr per input (padding past
    // N stays zero: its db is taken as zero).
    for (p, panel) in dw.chunks_exact_mut((k * nr).max(1)).enumerate() {
        let cols = &db[p * nr..((p + 1) * nr).min(n)];
        for (row, &c) in panel.chunks_exact_mut(nr).zip(offsets) {
            for (v, &g) in row.iter_mut().zip(cols) {
                *v = *v + c * g;
            }
        }
    }
}
