//! The vector operations the generic kernel bodies are written in, one
//! implementation per instruction set. Each is a zero-sized type whose
//! methods are `#[inline(always)]` wrappers of one intrinsic; they compile to
//! the intended instruction only once inlined into a function compiled with
//! the instruction set enabled (the `#[target_feature]` entry points in
//! `isa.rs`), which is the only way they are reached.
//!
//! # Safety contract (all methods)
//! The CPU supports the instruction set of the implementing type (the
//! kernel table is only built after run-time detection), and every pointer
//! is valid for `LANES` consecutive `f32` reads or writes (no alignment
//! needed).

/// How an instruction set's [`Simd::nonzero_lanes`] packs the non-zero
/// lanes of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lister {
    /// A loop over the set bytes of each word, whose exit mispredicts
    /// about once a word (the default).
    WordScan,
    /// A permutation from a table indexed by the lanes' mask (AVX2).
    Table,
    /// Compress instructions (AVX-512).
    Compress,
}

/// A vector of `LANES` f32 lanes and the operations the kernels use.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// The register type.
    type V: Copy;
    /// Lanes per register.
    const LANES: usize;
    /// The name users see (`avx2`, `avx512`, `neon`).
    const NAME: &'static str;
    /// Whether this CPU runs it (run-time detection).
    fn detected() -> bool;
    /// How [`Simd::nonzero_lanes`] packs (the sparse weight gradient picks
    /// how it builds its per-pixel lists from it).
    const LISTER: Lister = Lister::WordScan;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `LANES` bytes at `p`, each converted exactly to f32 (`p` must be
    /// valid for `LANES` byte reads).
    unsafe fn load_u8(p: *const u8) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `v / 255`, correctly rounded, for lanes holding whole numbers 0 ..=
    /// 255 (pixels): the product with the rounded reciprocal, corrected
    /// once by its exact residual (two FMAs), which is cheaper than a
    /// division (a division's throughput limited listing a row's pixels
    /// on Zen 3). Exact for all 256 values, as the tests check against
    /// `pixel_table`'s division.
    #[inline(always)]
    unsafe fn div255(v: Self::V) -> Self::V {
        // SAFETY: the instruction set is present (trait contract).
        unsafe {
            let r = Self::splat(1.0 / 255.0);
            let q = Self::mul(v, r);
            // v - 255 q is exact in f32 for these v; adding it times r to q
            // rounds to the nearest f32 of v / 255.
            let e = Self::fmadd(q, Self::splat(-255.0), v);
            Self::fmadd(e, r, q)
        }
    }
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sqrt(a: Self::V) -> Self::V;
    /// `a * b + c` with one rounding.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `max(0, v)` lanewise, propagating NaN and keeping `-0.0`, exactly as
    /// the scalar `if v < 0 { 0 } else { v }`.
    unsafe fn relu(v: Self::V) -> Self::V;
    /// `v` where `mask > 0`, else `+0.0` (NaN in `mask` gives `+0.0`).
    unsafe fn keep_where_positive(mask: Self::V, v: Self::V) -> Self::V;
    /// Whether every lane is `> 0` (false if any is NaN).
    unsafe fn all_positive(v: Self::V) -> bool;
    /// The sum of the lanes (a fixed order per instruction set).
    unsafe fn hsum(v: Self::V) -> f32;
    /// A lister of whole image rows, listing as `sparse::csr_row` does
    /// (pixel indices ascending to `idx`, `pixel / 255` to `val`, each at
    /// least `src.len()` long; returns how many), where this CPU has a
    /// faster way than [`Simd::nonzero_lanes`] a vector at a time; `None`
    /// where it has not. Its sub-features are detected by this call: the
    /// backend asks once, when it is selected.
    fn wide_row_lister() -> Option<crate::sparse::CsrRow> {
        None
    }
    /// The non-zero floats among the `LANES` at `src`, in order: index
    /// `base + lane` to `idx` and the value to `val`, packed from their
    /// start; returns how many (`-0.0` counts as zero, NaN as non-zero).
    /// May write all `LANES` slots of `idx` and `val`; slots past the count
    /// are unspecified. This default is branch-free scalar code (a hidden
    /// layer's ReLU zeros fall at random, so a branch would mispredict);
    /// AVX-512 compresses in registers, AVX2 permutes by a table.
    #[inline(always)]
    unsafe fn nonzero_f32_lanes(src: *const f32, base: u32, idx: *mut u32, val: *mut f32) -> usize {
        let mut c = 0;
        for j in 0..Self::LANES {
            // SAFETY: j < LANES reads of src, and c <= j < LANES writes of
            // idx and val (contract above).
            unsafe {
                let v = *src.add(j);
                *idx.add(c) = base + j as u32;
                *val.add(c) = v;
                c += usize::from(v != 0.0);
            }
        }
        c
    }
    /// Transposes the 8 x 8 block at `src` (rows `lds` floats apart) into
    /// `dst` (rows `ldd` apart): `dst[c * ldd + r] = src[r * lds + c]`.
    /// `src` must be valid for reading and `dst` for writing 8 rows of 8
    /// floats; the blocks do not overlap. This default copies element by
    /// element; x86 shuffles in registers.
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        for r in 0..8 {
            for c in 0..8 {
                // SAFETY: r, c < 8: inside both blocks (contract above).
                unsafe { *dst.add(c * ldd + r) = *src.add(r * lds + c) };
            }
        }
    }
    /// The non-zero bytes among the `LANES` at `src`, in order: pixel
    /// index `base + lane` to `idx`, and `byte / 255` (rounded once, as
    /// `pixel_table`) to `val`, packed from their start; returns how many.
    /// May write all `LANES` slots of `idx` and `val` (both must be valid
    /// for that many writes); slots past the count are unspecified.
    ///
    /// This default visits the set bytes of each 8-byte word (see
    /// `sparse::for_each_nonzero`); AVX-512 compresses in registers, AVX2
    /// permutes by a table.
    #[inline(always)]
    unsafe fn nonzero_lanes(src: *const u8, base: u32, idx: *mut u32, val: *mut f32, lut: &[f32; 256]) -> usize {
        // SAFETY: src is valid for LANES byte reads, idx and val for LANES
        // writes, and the count c stays below LANES (trait contract).
        unsafe {
            let mut c = 0;
            for_each_nonzero(std::slice::from_raw_parts(src, Self::LANES), |j, p| {
                *idx.add(c) = base + j as u32;
                *val.add(c) = lut[usize::from(p)];
                c += 1;
            });
            c
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::{transpose_8x64_bytes, Avx512};
#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Neon;

/// Bit 7 of each byte of the result is set where that byte of `w` is
/// non-zero, every other bit is clear. (Per byte, `(b & 0x7f) + 0x7f` sets
/// bit 7 iff the low seven bits are not all zero, and never carries into
/// the next byte; or-ing `b` adds its own bit 7.)
fn nonzero_bytes(w: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    (((w & LO7) + LO7) | w) & !LO7
}

/// Calls `f(j, p)` for every non-zero byte `p` of `src`, at position `j`,
/// ascending. Eight bytes at a time: most words of an MNIST row are 0, and
/// in the others only the set bytes are visited.
#[inline(always)]
pub(crate) fn for_each_nonzero(src: &[u8], mut f: impl FnMut(usize, u8)) {
    let mut words = src.chunks_exact(8);
    let mut base = 0;
    for wd in &mut words {
        let mut t = nonzero_bytes(u64::from_le_bytes(wd.try_into().expect("8 bytes")));
        while t != 0 {
            let b = (t.trailing_zeros() / 8) as usize;
            f(base + b, wd[b]);
            t &= t - 1;
        }
        base += 8;
    }
    for (j, &p) in words.remainder().iter().enumerate() {
        if p != 0 {
            f(base + j, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{for_each_nonzero, nonzero_bytes};

    #[test]
    fn nonzero_bytes_marks_exactly_the_nonzero_bytes() {
        // Every value in every position, on a background of zeros and of
        // 0xff (no borrow or carry may leak into a neighbour).
        for background in [0u8, 0xff] {
            for pos in 0..8 {
                for v in 0..=255u8 {
                    let mut b = [background; 8];
                    b[pos] = v;
                    let want = b.iter().enumerate().map(|(i, &x)| u64::from(x != 0) << (8 * i + 7)).sum::<u64>();
                    assert_eq!(nonzero_bytes(u64::from_le_bytes(b)), want, "{b:?}");
                }
            }
        }
    }

    #[test]
    fn for_each_nonzero_visits_the_nonzero_bytes_in_order() {
        let mut s = 7u64;
        for len in 0..70 {
            for density in [0u64, 10, 50, 100] {
                let src: Vec<u8> = (0..len)
                    .map(|_| {
                        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        if (s >> 33) % 100 < density {
                            (s >> 50) as u8 | 1
                        } else {
                            0
                        }
                    })
                    .collect();
                let mut seen = Vec::new();
                for_each_nonzero(&src, |j, p| seen.push((j, p)));
                let want: Vec<(usize, u8)> = src.iter().copied().enumerate().filter(|&(_, p)| p != 0).collect();
                assert_eq!(seen, want, "{src:?}");
            }
        }
    }
}
