//! The shapes the ops share: [`Dims`], and [`PanelLayout`], how a
//! backend stores a kernel in panels of columns.

use crate::Real;

/// Shapes shared by the dense ops: the reduction length `k` and the output
/// width `n`. The batch size `B` is implied by the slices (`rows.len()`, or
/// the length of the output divided by `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Inner (reduction) dimension `K`.
    pub k: usize,
    /// Output columns `N`.
    pub n: usize,
}

/// How a `(K, N)` matrix is stored in panels of `nr` columns: panel `p`
/// holds columns `p*nr .. (p+1)*nr` as a row-major `(K, nr)` block, and the
/// columns past `N` in the last panel are zero. `nr == N` is row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanelLayout {
    /// Rows `K`.
    pub k: usize,
    /// Columns `N` (without padding).
    pub n: usize,
    /// Panel width (at least 1).
    pub nr: usize,
}

impl PanelLayout {
    /// Plain row-major `(K, N)`.
    pub fn row_major(k: usize, n: usize) -> Self {
        PanelLayout { k, n, nr: n.max(1) }
    }
    /// Panels of `nr` columns.
    pub fn panels_of(k: usize, n: usize, nr: usize) -> Self {
        assert!(nr > 0, "panel width 0");
        PanelLayout { k, n, nr }
    }
    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
    /// Stored elements, padding included.
    pub fn len(&self) -> usize {
        self.panels() * self.k * self.nr
    }
    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Position of element `(row, col)`.
    pub fn index(&self, row: usize, col: usize) -> usize {
        (col / self.nr) * self.k * self.nr + row * self.nr + col % self.nr
    }
    /// Copies row-major `src (K, N)` into this layout (padding set to zero).
    pub fn pack<T: Real>(&self, src: &[T], dst: &mut [T]) {
        assert_eq!(src.len(), self.k * self.n, "source is not (K, N)");
        assert_eq!(dst.len(), self.len(), "destination does not fit the layout");
        dst.fill(T::zero());
        for (row, r) in src.chunks_exact(self.n.max(1)).enumerate().take(self.k) {
            for (col, &v) in r.iter().enumerate() {
                dst[self.index(row, col)] = v;
            }
        }
    }
    /// Copies this layout back into row-major `dst (K, N)`.
    pub fn unpack<T: Real>(&self, src: &[T], dst: &mut [T]) {
        assert_eq!(src.len(), self.len(), "source does not fit the layout");
        assert_eq!(dst.len(), self.k * self.n, "destination is not (K, N)");
        for (row, r) in dst.chunks_exact_mut(self.n.max(1)).enumerate().take(self.k) {
            for (col, v) in r.iter_mut().enumerate() {
                *v = src[self.index(row, col)];
            }
        }
    }
}
