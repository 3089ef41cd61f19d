//! NEON (every aarch64 CPU): the [`Simd`] operations in `v` registers.

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
