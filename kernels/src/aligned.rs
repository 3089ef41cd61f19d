//! A growable-free buffer whose first element sits on a 64-byte boundary.
//!
//! The kernels load whole vectors (64 bytes in AVX-512) from `W1`, `H` and
//! `dH`; `Vec<f32>` gives only 4- or 16-byte alignment (large blocks come
//! from glibc at a page + 16 bytes), which makes every AVX-512 load of such
//! a buffer straddle two cache lines. [`AlignedVec`] keeps its elements in
//! whole cache lines instead and is viewed as a slice, without `unsafe`.
//!
//! Large buffers (64 KiB and up: weights, optimizer state, activations) are
//! also placed at a fixed offset within a 4 KiB page, a different cache line
//! for each buffer made: where glibc puts a large block depends on every
//! allocation before it, and the relative placement of buffers the kernels
//! stream together (`W1` and its optimizer state; in the forward, `W1` and
//! the partial sums) decides whether their accesses collide mod 4 KiB
//! (store-to-load false dependencies, L1 set conflicts). Unplaced, two
//! builds that differed in an unrelated string trained the tutorial network
//! up to 10% apart (docs/performance-log.md).

use bytemuck::{Pod, Zeroable};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// One cache line of storage.
#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` elements of `T`, the first on a 64-byte boundary. Derefs to `[T]`.
pub struct AlignedVec<T> {
    lines: Vec<Line>,
    /// The line the elements start at (the placement within a page).
    start: usize,
    len: usize,
    _t: PhantomData<T>,
}

/// Buffers at least this large are placed within a page (module docs).
const PLACED_BYTES: usize = 64 << 10;
const LINES_PER_PAGE: usize = 4096 / 64;

impl<T: Pod> AlignedVec<T> {
    /// `len` elements whose bytes are all zero (`0.0` for floats).
    pub fn zeroed(len: usize) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Counts placed buffers: each gets the next line of the page
        /// (stepping by 7 lines, coprime to 64, so consecutive buffers are
        /// far apart within the page).
        static PLACED: AtomicUsize = AtomicUsize::new(0);
        let bytes = len.checked_mul(size_of::<T>()).expect("buffer size overflows");
        let n = bytes.div_ceil(64);
        if bytes < PLACED_BYTES {
            return AlignedVec { lines: vec![Line::zeroed(); n], start: 0, len, _t: PhantomData };
        }
        let lines = vec![Line::zeroed(); n + LINES_PER_PAGE];
        let want = PLACED.fetch_add(1, Ordering::Relaxed) * 7 % LINES_PER_PAGE;
        let at = (lines.as_ptr() as usize / 64) % LINES_PER_PAGE;
        let start = (want + LINES_PER_PAGE - at) % LINES_PER_PAGE;
        AlignedVec { lines, start, len, _t: PhantomData }
    }

    /// A copy of `src`.
    pub fn from_slice(src: &[T]) -> Self {
        let mut v = Self::zeroed(src.len());
        v.copy_from_slice(src);
        v
    }
}

/// `len` floats of `buf` starting on a 64-byte boundary (the buffer grows by
/// up to 15 floats for it). The kernels' scratch buffers are `Vec`s kept per
/// thread, which glibc starts anywhere 16-byte aligned; a 256-byte row of a
/// packed panel or of dZ's group block that straddles cache lines then
/// takes five lines of L1 instead of four. With `zero` every element is 0;
/// else the contents are unspecified (the caller writes all of them).
pub(crate) fn window(buf: &mut Vec<f32>, len: usize, zero: bool) -> &mut [f32] {
    // Never shrunk: one thread's buffer serves products of several sizes in
    // turn, and growing it back would clear the new part every time.
    if buf.len() < len + 15 {
        buf.resize(len + 15, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(15);
    let view = &mut buf[off..off + len];
    if zero {
        view.fill(0.0);
    }
    view
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice::<Line, T>(&self.lines[self.start..])[..self.len]
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut::<Line, T>(&mut self.lines[self.start..])[..self.len]
    }
}

impl<T: Pod> Clone for AlignedVec<T> {
    /// A copy, placed anew (the copy's page offset is its own).
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Pod> FromIterator<T> for AlignedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::from_slice(&iter.into_iter().collect::<Vec<T>>())
    }
}

impl<'a, T: Pod> IntoIterator for &'a AlignedVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Pod + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedVec;

    #[test]
    fn aligned_zeroed_and_sliced() {
        for len in [0usize, 1, 15, 16, 17, 1000, 401_408] {
            let mut v = AlignedVec::<f32>::zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            assert_eq!(v.as_ptr() as usize % 64, 0, "len {len}");
            if len > 0 {
                v[len - 1] = 3.5;
                assert_eq!(v[len - 1], 3.5);
            }
            let w: AlignedVec<f64> = (0..len).map(|i| i as f64).collect();
            assert_eq!(w.as_ptr() as usize % 64, 0);
            assert!(w.iter().enumerate().all(|(i, &x)| x == i as f64));
            assert_eq!(w.clone(), w);
        }
    }

    #[test]
    fn windows_are_line_aligned_and_zeroed_on_request() {
        let mut buf = vec![7.0f32; 3];
        for len in [0usize, 1, 17, 1000] {
            let w = super::window(&mut buf, len, true);
            assert_eq!(w.len(), len);
            assert_eq!(w.as_ptr() as usize % 64, 0);
            assert!(w.iter().all(|&x| x == 0.0));
            w.fill(1.0);
        }
    }

    #[test]
    fn large_buffers_start_on_distinct_lines_of_a_page() {
        let bufs: Vec<AlignedVec<f32>> = (0..8).map(|_| AlignedVec::zeroed(100_000)).collect();
        let lines: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize % 4096 / 64).collect();
        for (i, a) in lines.iter().enumerate() {
            assert!(lines[i + 1..].iter().all(|b| b != a), "two buffers on line {a} of their pages: {lines:?}");
        }
        assert!(bufs.iter().all(|b| b.len() == 100_000 && b.iter().all(|&x| x == 0.0)));
    }
}
