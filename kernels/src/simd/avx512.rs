//! AVX-512F (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4 and 5): the
//! [`Simd`] operations in `zmm` registers, and the byte kernels that need
//! BW and VBMI2 as well.

use super::avx2::transpose8_avx;
use super::{Lister, Simd};
use std::arch::x86_64::*;

/// AVX-512F: 16 lanes of f32 in 32 `zmm` registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512;

/// `Simd::wide_row_lister` with AVX-512 VBMI2 (Ice Lake, Sapphire Rapids,
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
        63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36,
        35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8,
        7, 6, 5, 4, 3, 2, 1, 0,
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
    fn wide_row_lister() -> Option<crate::sparse::CsrRow> {
        let vbmi2 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi2");
        // SAFETY: the lister exists only where its features were detected
        // (here); `csr_row_vbmi2` asserts the slots' lengths.
        vbmi2.then_some(|src, idx, val| unsafe { csr_row_vbmi2(src, idx, val) })
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
