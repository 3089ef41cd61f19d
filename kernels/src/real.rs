//! [`Real`]: the element type every kernel is generic over.

use std::fmt::Debug;

/// The element type of the kernels: `f32` for training, `f64` for the
/// reference path of the gradient checks.
pub trait Real: num_traits::Float + bytemuck::Pod + Default + Debug + Send + Sync + 'static {
    /// `v` converted exactly (every `u8` is representable).
    fn from_u8(v: u8) -> Self;
    /// `v` rounded to the nearest representable value.
    fn from_f64(v: f64) -> Self;
    /// `self` widened (exactly for `f32` and `f64`).
    fn to_f64(self) -> f64;
    /// `1 / (1 + exp(-self))`: for `f32` a formula that gives the same bits on
    /// every backend and vector width; for `f64` through libm's `exp`.
    fn sigmoid(self) -> Self;
    /// `tanh(self)`: for `f32` likewise (see [`Real::sigmoid`]); for
    /// `f64` libm's.
    fn tanh_act(self) -> Self;
}

impl Real for f32 {
    fn from_u8(v: u8) -> Self {
        f32::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn sigmoid(self) -> Self {
        sigmoid_f32(self)
    }
    fn tanh_act(self) -> Self {
        tanh_f32(self)
    }
}

impl Real for f64 {
    fn from_u8(v: u8) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn tanh_act(self) -> Self {
        self.tanh()
    }
}

// The f32 activations. Written in IEEE operations that round the same way
// everywhere (`+ - * /`, `floor`, compares, bit moves; no FMA, which Rust
// never contracts), so that the scalar loop over a row compiles to vector
// code under each instruction set (`Isa::activate`) and every backend,
// scalar and BLAS included, gets the same bits; libm's `expf` and `tanhf`
// are neither (one call an element took a third of a tanh network's
// epoch). Their errors against the exact function (in f64) are measured
// by the tests below.

/// `e^x` for `x <= 0` (NaN stays NaN): Cody and Waite's reduction `x = n
/// ln 2 + r`, `|r| <= ln 2 / 2`, Cephes's degree-6 polynomial for `e^r`,
/// and `2^n` built in the exponent bits. Below -87 (where `e^x` nears the
/// smallest normal float) it gives `e^-87`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, the first with few enough bits that `n * LN2_HI`
    // is exact for |n| <= 126.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    // 2^n for n in -126..=0: n + 127 lands in the low bits of 2^23 + 127 +
    // n, and the shift moves them into the exponent (NaN gives 0, and p
    // keeps the NaN).
    let two_n = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    p * two_n
}

/// Sigmoid in f32: `e = exp(-|z|)`, then `1 / (1 + e)` for `z >= 0` and
/// `e / (1 + e)` below (no overflow, no cancellation).
#[inline(always)]
pub(crate) fn sigmoid_f32(z: f32) -> f32 {
    let e = exp_nonpositive(-z.abs());
    let num = if z >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// Tanh in f32: below |z| = 0.625 its odd Taylor polynomial to `z^19`;
/// above, `1 - 2 e / (1 + e)` with `e = exp(-2 |z|)` and the sign of `z`.
#[inline(always)]
pub(crate) fn tanh_f32(z: f32) -> f32 {
    let a = z.abs();
    let e = exp_nonpositive(-2.0 * a);
    let far = (1.0 - 2.0 * e / (1.0 + e)).copysign(z);
    // tanh z = z + z s P(s), s = z^2: the series' coefficients, 2^2k (2^2k
    // - 1) B_2k / (2k)!, in Horner's order.
    let s = z * z;
    let p = -443_861_162.0 / 1_856_156_927_625.0;
    let p = p * s + 6_404_582.0 / 10_854_718_875.0;
    let p = p * s - 929_569.0 / 638_512_875.0;
    let p = p * s + 21_844.0 / 6_081_075.0;
    let p = p * s - 1_382.0 / 155_925.0;
    let p = p * s + 62.0 / 2_835.0;
    let p = p * s - 17.0 / 315.0;
    let p = p * s + 2.0 / 15.0;
    let p = p * s - 1.0 / 3.0;
    // (The sign of zero too: -0 + 0 would be +0.)
    let near = (z + z * s * p).copysign(z);
    if a < 0.625 {
        near
    } else {
        far
    }
}

#[cfg(test)]
mod tests {
    use super::{sigmoid_f32, tanh_f32};

    /// The largest error of `f` against `exact` (computed in f64) in units
    /// in the last place of the exact result, and where, over about two
    /// million floats spread evenly by bit pattern over [-limit, limit].
    fn max_ulps(f: fn(f32) -> f32, exact: fn(f64) -> f64, limit: f32) -> (f64, f32) {
        let top = limit.to_bits();
        let mut worst = (0.0, 0.0);
        for bits in (0..top).step_by(1021) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let want = exact(f64::from(x));
                let got = f64::from(f(x));
                // One ulp of the exact result as an f32 (the normal floats'
                // spacing at its magnitude; the smallest normal's below).
                let w = (want as f32).abs().max(f32::MIN_POSITIVE);
                let ulp = f64::from(f32::from_bits(w.to_bits() + 1) - w);
                let err = (got - want).abs() / ulp;
                if err > worst.0 {
                    worst = (err, x);
                }
            }
        }
        worst
    }

    #[test]
    fn f32_activations_are_within_a_few_ulps_of_the_exact_functions() {
        let tanh = max_ulps(tanh_f32, f64::tanh, 12.0);
        let sigmoid = max_ulps(sigmoid_f32, |z| 1.0 / (1.0 + (-z).exp()), 80.0);
        println!("largest errors: tanh {:.2} ulp at {}, sigmoid {:.2} ulp at {}", tanh.0, tanh.1, sigmoid.0, sigmoid.1);
        // Measured: 1.37 and 2.22 ulp; glibc's `tanhf` and `1 / (1 +
        // expf(-z))` in f32, which these replace, gave 2.07 and 2.14 here.
        assert!(tanh.0 <= 1.5, "tanh: {tanh:?}");
        assert!(sigmoid.0 <= 2.5, "sigmoid: {sigmoid:?}");
    }

    #[test]
    fn f32_activations_keep_the_special_values() {
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(30.0), 1.0);
        assert_eq!(sigmoid_f32(0.0), 0.5);
        assert_eq!(sigmoid_f32(f32::INFINITY), 1.0);
        assert_eq!(sigmoid_f32(40.0), 1.0);
        assert!(sigmoid_f32(f32::NEG_INFINITY) < 2e-38);
        assert!(tanh_f32(f32::NAN).is_nan() && sigmoid_f32(f32::NAN).is_nan());
    }
}
