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
    /// A whole image row listed as `sparse::csr_row` lists it (pixel
    /// indices ascending to `idx`, `pixel / 255` to `val`, each at least
    /// `src.len()` long; returns how many), where this CPU has a faster way
    /// than [`Simd::nonzero_lanes`] a vector at a time; `None` where it
    /// has not (the caller then goes a vector at a time).
    #[inline(always)]
    unsafe fn csr_row_wide(_src: &[u8], _idx: &mut [u32], _val: &mut [f32]) -> Option<usize> {
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
pub(crate) use x86::{transpose_8x64_bytes, Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lister, Simd};
    use std::arch::x86_64::*;

    /// AVX2 with FMA: 8 lanes of f32 in 16 `ymm` registers.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2;

    /// AVX-512F: 16 lanes of f32 in 32 `zmm` registers.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512;

    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        const NAME: &'static str = "avx2";
        const LISTER: Lister = Lister::Table;
        fn detected() -> bool {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: p is valid for 8 reads; unaligned load (module contract).
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8) -> __m256 {
            // SAFETY: p is valid for 8 byte reads (trait contract); AVX2 is present.
            unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: p is valid for 8 writes; unaligned store (module contract).
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sqrt(a: __m256) -> __m256 {
            // SAFETY: AVX is present (module contract).
            unsafe { _mm256_sqrt_ps(a) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: FMA is present (module contract).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn relu(v: __m256) -> __m256 {
            // SAFETY: AVX is present. maxps returns its second operand when
            // either is NaN or both are zeros, so NaN and -0.0 pass through.
            unsafe { _mm256_max_ps(_mm256_setzero_ps(), v) }
        }
        #[inline(always)]
        unsafe fn keep_where_positive(mask: __m256, v: __m256) -> __m256 {
            // SAFETY: AVX is present; ordered "greater than" is false for NaN.
            unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(mask, _mm256_setzero_ps()), v) }
        }
        #[inline(always)]
        unsafe fn all_positive(v: __m256) -> bool {
            // SAFETY: AVX is present; ordered "greater than" is false for NaN.
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps())) == 0xff }
        }
        #[inline(always)]
        unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            // SAFETY: AVX is present (implied by this instruction set); the
            // blocks as the trait requires (caller).
            unsafe { transpose8_avx(src, lds, dst, ldd) }
        }
        #[inline(always)]
        unsafe fn nonzero_f32_lanes(src: *const f32, base: u32, idx: *mut u32, val: *mut f32) -> usize {
            // SAFETY: src is valid for 8 reads, idx and val for 8 writes
            // (trait contract); AVX2 is present; the table index is an 8-bit
            // mask. "Not equal, unordered" is true for NaN and false for
            // both zeros. The lanes are packed by a permutation from the
            // table (AVX2 has no compress).
            unsafe {
                let v = _mm256_loadu_ps(src);
                let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(v, _mm256_setzero_ps())) as usize;
                if mask == 0 {
                    return 0;
                }
                let perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64(COMPRESS8.as_ptr().add(mask) as *const __m128i));
                _mm256_storeu_si256(idx as *mut __m256i, _mm256_add_epi32(_mm256_set1_epi32(base as i32), perm));
                _mm256_storeu_ps(val, _mm256_permutevar8x32_ps(v, perm));
                mask.count_ones() as usize
            }
        }
        #[inline(always)]
        unsafe fn nonzero_lanes(src: *const u8, base: u32, idx: *mut u32, val: *mut f32, _: &[f32; 256]) -> usize {
            // SAFETY: src is valid for 8 byte reads, idx and val for 8
            // writes (trait contract); AVX2 is present; the table index is
            // an 8-bit mask. Branch-free: where the lit pixels of a row
            // begin and end is not predictable, and the default's loop
            // over the set bytes of each word mispredicts its exit about
            // once a word. `div255` is exact, as pixel_table.
            unsafe {
                let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(src as *const __m128i));
                let lit = _mm256_xor_si256(_mm256_cmpeq_epi32(bytes, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
                let mask = _mm256_movemask_ps(_mm256_castsi256_ps(lit)) as usize;
                let perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64(COMPRESS8.as_ptr().add(mask) as *const __m128i));
                let values = Self::div255(_mm256_cvtepi32_ps(bytes));
                _mm256_storeu_si256(idx as *mut __m256i, _mm256_add_epi32(_mm256_set1_epi32(base as i32), perm));
                _mm256_storeu_ps(val, _mm256_permutevar8x32_ps(values, perm));
                mask.count_ones() as usize
            }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            // SAFETY: AVX is present (module contract).
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }

    /// `Simd::csr_row_wide` with AVX-512 VBMI2 (Ice Lake, Sapphire Rapids,
    /// Zen 4 and later): 64 pixels a step, their non-zero bytes and lane
    /// numbers packed by one byte compress each, then widened 16 at a
    /// time. A row of MNIST is 13 such steps, not 49 of 16 pixels, and a
    /// dark step is one test (the 16-pixel compress was a tenth of a
    /// Sapphire Rapids epoch, built once per task for the forward and once
    /// for dW1).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VBMI2; `idx` and `val` hold at least
    /// `src.len()` entries (asserted).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    pub(crate) unsafe fn csr_row_vbmi2(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize {
        let k = src.len();
        assert!(idx.len() >= k && val.len() >= k && k <= u32::MAX as usize);
        let lanes = _mm512_set_epi8(
            63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37,
            36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
            9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        );
        let mut c = 0;
        for j in (0..k).step_by(64) {
            let in_row = if k - j >= 64 { u64::MAX } else { (1u64 << (k - j)) - 1 };
            // SAFETY: the masked load reads only bytes j .. min(j + 64, k)
            // of src; the features are present (contract).
            let bytes = unsafe { _mm512_maskz_loadu_epi8(in_row, src.as_ptr().add(j) as *const i8) };
            let lit = _mm512_test_epi8_mask(bytes, bytes);
            if lit == 0 {
                continue;
            }
            let (mut pix, mut at) = (_mm512_maskz_compress_epi8(lit, bytes), _mm512_maskz_compress_epi8(lit, lanes));
            let (n, base) = (lit.count_ones() as usize, _mm512_set1_epi32(j as i32));
            let mut q = 0;
            while q < n {
                let keep = if n - q >= 16 { 0xffff } else { (1u16 << (n - q)) - 1 };
                let p32 = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(pix));
                let a32 = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm512_castsi512_si128(at)));
                // SAFETY: AVX-512F is present (contract).
                let v = unsafe { Avx512::div255(_mm512_cvtepi32_ps(p32)) };
                // SAFETY: the masked stores write entries c + q .. c + min(n,
                // q + 16) <= the row's non-zeros so far <= k, inside idx and
                // val (asserted above).
                unsafe {
                    _mm512_mask_storeu_epi32(idx.as_mut_ptr().add(c + q) as *mut i32, keep, a32);
                    _mm512_mask_storeu_ps(val.as_mut_ptr().add(c + q), keep, v);
                }
                // The next 16 packed bytes down to the bottom lanes.
                pix = _mm512_alignr_epi32::<4>(_mm512_setzero_si512(), pix);
                at = _mm512_alignr_epi32::<4>(_mm512_setzero_si512(), at);
                q += 16;
            }
            c += n;
        }
        c
    }

    /// `dst[p * ldd .. p * ldd + 8] = (src[0][p], .., src[7][p])` for the
    /// 64 pixels `p` of 8 rows (the byte transpose of `sparse`'s pixel
    /// lists, 64 pixels a step instead of 8): three rounds of unpacks
    /// interleave the rows' bytes, pairs and quads within each 128-bit
    /// lane, and each resulting 64-bit word goes to its pixel's slots.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW; each `src[r]` is valid for 64 byte
    /// reads and `dst` for 8-byte writes at `p * ldd` for `p < 64`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn transpose_8x64_bytes(src: [*const u8; 8], dst: *mut u8, ldd: usize) {
        // SAFETY: the loads and stores stay inside the rows and slots of
        // the contract; the features are present.
        unsafe {
            let r: [__m512i; 8] = std::array::from_fn(|i| _mm512_loadu_si512(src[i] as *const __m512i));
            // Per 128-bit lane L: a[h][k] holds pixels 16 L + 8 h + 0..8,
            // rows 2k and 2k + 1, a byte pair each.
            let a: [[__m512i; 4]; 2] = [
                std::array::from_fn(|k| _mm512_unpacklo_epi8(r[2 * k], r[2 * k + 1])),
                std::array::from_fn(|k| _mm512_unpackhi_epi8(r[2 * k], r[2 * k + 1])),
            ];
            let mut words = [0u64; 64];
            for (h, a) in a.iter().enumerate() {
                // c[g][m]: pixels 16 L + 8 h + 4 g + 0..4, rows 4m .. 4m + 4.
                let c: [[__m512i; 2]; 2] = [
                    std::array::from_fn(|m| _mm512_unpacklo_epi16(a[2 * m], a[2 * m + 1])),
                    std::array::from_fn(|m| _mm512_unpackhi_epi16(a[2 * m], a[2 * m + 1])),
                ];
                for (g, c) in c.iter().enumerate() {
                    // Words of 8 rows: pixels 16 L + 8 h + 4 g + 2 e + q at
                    // word 2 L + q of d[e].
                    let d = [_mm512_unpacklo_epi32(c[0], c[1]), _mm512_unpackhi_epi32(c[0], c[1])];
                    for (e, d) in d.iter().enumerate() {
                        _mm512_storeu_si512(words.as_mut_ptr().add((h * 4 + g * 2 + e) * 8) as *mut __m512i, *d);
                    }
                }
            }
            for (z, w) in words.chunks_exact(8).enumerate() {
                let (h, g, e) = (z / 4, z / 2 % 2, z % 2);
                for (at, &word) in w.iter().enumerate() {
                    let p = 16 * (at / 2) + 8 * h + 4 * g + 2 * e + at % 2;
                    (dst.add(p * ldd) as *mut u64).write_unaligned(word);
                }
            }
        }
    }

    /// For each 8-bit mask, the indices of its set bits in ascending order,
    /// one per byte (the permutation that packs those lanes first).
    const fn compress_table() -> [u64; 256] {
        let mut t = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let (mut v, mut c, mut j) = (0u64, 0, 0);
            while j < 8 {
                if m & (1 << j) != 0 {
                    v |= (j as u64) << (8 * c);
                    c += 1;
                }
                j += 1;
            }
            t[m] = v;
            m += 1;
        }
        t
    }
    static COMPRESS8: [u64; 256] = compress_table();

    /// [`Simd::transpose8`] in `ymm` registers: unpack pairs of rows, then
    /// pairs of pairs, then swap 128-bit halves (24 shuffles for 64 floats).
    ///
    /// # Safety
    /// AVX is present; as [`Simd::transpose8`].
    #[inline(always)]
    unsafe fn transpose8_avx(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: AVX is present; every load and store covers one of the 8
        // rows of 8 floats of its block (caller).
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, &v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * ldd), v);
            }
        }
    }

    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        const NAME: &'static str = "avx512";
        const LISTER: Lister = Lister::Compress;
        fn detected() -> bool {
            is_x86_feature_detected!("avx512f")
        }
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: p is valid for 16 reads; unaligned load (module contract).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8) -> __m512 {
            // SAFETY: p is valid for 16 byte reads (trait contract); AVX-512F is present.
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: p is valid for 16 writes; unaligned store (module contract).
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sqrt(a: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_sqrt_ps(a) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: AVX-512F is present (module contract).
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn relu(v: __m512) -> __m512 {
            // SAFETY: AVX-512F is present. Like maxps, vmaxps returns the
            // second operand when either is NaN or both are zeros.
            unsafe { _mm512_max_ps(_mm512_setzero_ps(), v) }
        }
        #[inline(always)]
        unsafe fn keep_where_positive(mask: __m512, v: __m512) -> __m512 {
            // SAFETY: AVX-512F is present; ordered "greater than" is false for NaN.
            unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(mask, _mm512_setzero_ps()), v) }
        }
        #[inline(always)]
        unsafe fn all_positive(v: __m512) -> bool {
            // SAFETY: AVX-512F is present; ordered "greater than" is false for NaN.
            unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps()) == 0xffff }
        }
        #[inline(always)]
        unsafe fn csr_row_wide(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> Option<usize> {
            // std caches the detection; one check a row.
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vbmi2") {
                // SAFETY: the features were detected.
                Some(unsafe { csr_row_vbmi2(src, idx, val) })
            } else {
                None
            }
        }
        #[inline(always)]
        unsafe fn nonzero_lanes(src: *const u8, base: u32, idx: *mut u32, val: *mut f32, _: &[f32; 256]) -> usize {
            // SAFETY: src is valid for 16 byte reads, idx and val for 16
            // writes (trait contract); AVX-512F is present. `div255` is
            // exact, as pixel_table.
            unsafe {
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(src as *const __m128i));
                let lit = _mm512_test_epi32_mask(bytes, bytes);
                if lit == 0 {
                    return 0;
                }
                let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
                let pixels = _mm512_add_epi32(_mm512_set1_epi32(base as i32), lanes);
                let values = Self::div255(_mm512_cvtepi32_ps(bytes));
                _mm512_storeu_si512(idx as *mut __m512i, _mm512_maskz_compress_epi32(lit, pixels));
                _mm512_storeu_ps(val, _mm512_maskz_compress_ps(lit, values));
                lit.count_ones() as usize
            }
        }
        #[inline(always)]
        unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            // SAFETY: AVX is present (implied by this instruction set); the
            // blocks as the trait requires (caller).
            unsafe { transpose8_avx(src, lds, dst, ldd) }
        }
        #[inline(always)]
        unsafe fn nonzero_f32_lanes(src: *const f32, base: u32, idx: *mut u32, val: *mut f32) -> usize {
            // SAFETY: src is valid for 16 reads, idx and val for 16 writes
            // (trait contract); AVX-512F is present. "Not equal, unordered"
            // is true for NaN and false for both zeros.
            unsafe {
                let v = _mm512_loadu_ps(src);
                let lit = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, _mm512_setzero_ps());
                if lit == 0 {
                    return 0;
                }
                let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
                let at = _mm512_add_epi32(_mm512_set1_epi32(base as i32), lanes);
                _mm512_storeu_si512(idx as *mut __m512i, _mm512_maskz_compress_epi32(lit, at));
                _mm512_storeu_ps(val, _mm512_maskz_compress_ps(lit, v));
                lit.count_ones() as usize
            }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            // SAFETY: AVX-512F is present. Halves are added pairwise down to
            // one lane (a fixed order, unlike `_mm512_reduce_add_ps`'s docs).
            unsafe {
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                let s = _mm256_add_ps(lo, hi);
                let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Simd;
    use std::arch::aarch64::*;

    /// NEON (Advanced SIMD): 4 lanes of f32 in 32 `v` registers.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Neon;

    impl Simd for Neon {
        type V = float32x4_t;
        const LANES: usize = 4;
        const NAME: &'static str = "neon";
        fn detected() -> bool {
            std::arch::is_aarch64_feature_detected!("neon")
        }
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            // SAFETY: p is valid for 4 reads (module contract).
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8) -> float32x4_t {
            // SAFETY: p is valid for 4 byte reads (trait contract); NEON is present.
            unsafe {
                let word = u32::from_ne_bytes(std::ptr::read_unaligned(p as *const [u8; 4]));
                let bytes = vreinterpret_u8_u32(vdup_n_u32(word));
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(bytes))))
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            // SAFETY: p is valid for 4 writes (module contract).
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vsubq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vdivq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn sqrt(a: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present (module contract).
            unsafe { vsqrtq_f32(a) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present; vfmaq_f32(c, a, b) = c + a * b, fused.
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        unsafe fn relu(v: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present. Select v where !(v < 0) (true for NaN
            // and -0.0), else +0.0: exactly the scalar rule.
            unsafe {
                let neg = vcltq_f32(v, vdupq_n_f32(0.0));
                vbslq_f32(neg, vdupq_n_f32(0.0), v)
            }
        }
        #[inline(always)]
        unsafe fn keep_where_positive(mask: float32x4_t, v: float32x4_t) -> float32x4_t {
            // SAFETY: NEON is present; "greater than" is false for NaN.
            unsafe { vbslq_f32(vcgtq_f32(mask, vdupq_n_f32(0.0)), v, vdupq_n_f32(0.0)) }
        }
        #[inline(always)]
        unsafe fn all_positive(v: float32x4_t) -> bool {
            // SAFETY: NEON is present; "greater than" is false for NaN, and
            // gives all-ones lanes where true, so the minimum is non-zero
            // only when every lane is.
            unsafe { vminvq_u32(vcgtq_f32(v, vdupq_n_f32(0.0))) != 0 }
        }
        #[inline(always)]
        unsafe fn hsum(v: float32x4_t) -> f32 {
            // SAFETY: NEON is present; pairwise adds, a fixed order.
            unsafe {
                let p = vpaddq_f32(v, v);
                vgetq_lane_f32::<0>(vpaddq_f32(p, p))
            }
        }
    }
}

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
