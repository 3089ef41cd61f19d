//! AVX2 with FMA (Haswell, Zen 1-3 and later): the [`Simd`] operations in
//! `ymm` registers, and the 8 x 8 float transpose AVX-512 shares.

use super::{Lister, Simd};
use std::arch::x86_64::*;

/// AVX2 with FMA: 8 lanes of f32 in 16 `ymm` registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2;

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
pub(super) unsafe fn transpose8_avx(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
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
