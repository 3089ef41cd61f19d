//! The optimizer's maths: RMSprop's hyper-parameters, the scalar formula
//! (the reference every backend's update is bit-identical to), and the
//! vector form the SIMD kernels fuse into their weight-gradient products.
//!
//! Keras 3 runs RMSprop as `v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v +
//! eps)`, in f32, in that order of operations; so does every function here
//! (no FMA contraction, so that every backend rounds identically).

use crate::simd::Simd;
use crate::Real;

/// Hyper-parameters of the RMSprop update, in Keras's names. They are kept
/// in `f64`, as Keras keeps them in Python floats, and rounded to the element
/// type once per update ([`RmsProp::coefficients`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate (Keras default 1e-3).
    pub lr: f64,
    /// Decay of the squared-gradient average (Keras default 0.9).
    pub rho: f64,
    /// Added under the square root (Keras default 1e-7).
    pub eps: f64,
}

impl Default for RmsProp {
    fn default() -> Self {
        Self { lr: 1e-3, rho: 0.9, eps: 1e-7 }
    }
}

impl RmsProp {
    /// `(lr, rho, 1 - rho, eps)` rounded to `T`; `1 - rho` is formed in `f64`
    /// first, as Keras forms it in Python (in `f32`, `1 - 0.9f32` would be
    /// one unit in the last place away from `0.1f32`).
    pub fn coefficients<T: Real>(&self) -> (T, T, T, T) {
        (T::from_f64(self.lr), T::from_f64(self.rho), T::from_f64(1.0 - self.rho), T::from_f64(self.eps))
    }
}

/// One RMSprop step on a chunk, on the calling thread, exactly as Keras 3
/// computes it: `v = rho * v + (1 - rho) * g^2; w = w - (lr * g) / sqrt(v + eps)`.
pub fn rmsprop_serial<T: Real>(w: &mut [T], g: &[T], v: &mut [T], opt: RmsProp) {
    let (lr, rho, decay, eps) = opt.coefficients::<T>();
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = rho * *v + decay * (g * g);
        *w = *w - (lr * g) / (*v + eps).sqrt();
    }
}

/// RMSprop's coefficients `(lr, rho, 1 - rho, eps)` in registers.
#[derive(Clone, Copy)]
pub(crate) struct RmsPropV<V> {
    lr: V,
    rho: V,
    decay: V,
    eps: V,
    /// Whether `lr * 0` is `+0` (a finite `lr >= +0`).
    zero_step: bool,
}

impl<V: Copy> RmsPropV<V> {
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    pub(crate) unsafe fn new<S: Simd<V = V>>(opt: RmsProp) -> Self {
        let (lr, rho, decay, eps) = opt.coefficients::<f32>();
        // SAFETY: the CPU runs S (caller).
        unsafe {
            RmsPropV {
                lr: S::splat(lr),
                rho: S::splat(rho),
                decay: S::splat(decay),
                eps: S::splat(eps),
                zero_step: (lr * 0.0).to_bits() == 0,
            }
        }
    }
}

/// One RMSprop step of `LANES` parameters at `w` and velocities at `v` with
/// gradient `g`, with the scalar reference's exact sequence of roundings
/// (no FMA), so that every backend updates bit-identically.
///
/// # Safety
/// The CPU runs `S`; `w` and `v` are valid for `LANES` reads and writes.
#[inline(always)]
pub(crate) unsafe fn rmsprop_lanes<S: Simd>(w: *mut f32, v: *mut f32, g: S::V, c: RmsPropV<S::V>) {
    // SAFETY: forwarded contract.
    unsafe {
        let vn = update_velocity::<S>(v, g, c);
        apply_step::<S>(w, g, vn, c);
    }
}

/// `v := rho v + (1 - rho) g^2` on `LANES` velocities; returns the new `v`.
///
/// # Safety
/// As [`rmsprop_lanes`].
#[inline(always)]
unsafe fn update_velocity<S: Simd>(v: *mut f32, g: S::V, c: RmsPropV<S::V>) -> S::V {
    // SAFETY: forwarded contract.
    unsafe {
        let vn = S::add(S::mul(c.rho, S::load(v)), S::mul(c.decay, S::mul(g, g)));
        S::store(v, vn);
        vn
    }
}

/// `w -= lr g / sqrt(vn + eps)` on `LANES` weights, `vn` the new velocity.
///
/// # Safety
/// As [`rmsprop_lanes`].
#[inline(always)]
unsafe fn apply_step<S: Simd>(w: *mut f32, g: S::V, vn: S::V, c: RmsPropV<S::V>) {
    // SAFETY: forwarded contract.
    unsafe {
        let step = S::div(S::mul(c.lr, g), S::sqrt(S::add(vn, c.eps)));
        S::store(w, S::sub(S::load(w), step));
    }
}

/// [`rmsprop_lanes`] with a gradient of `+0` in every lane, bit for bit,
/// but without touching `w` when that cannot change it: `v := rho v + 0`,
/// and then the step `lr * 0 / sqrt(v + eps)` is `+0` wherever `lr * 0` is
/// `+0` and `v + eps > 0`, and `w - (+0)` is `w` (also for `-0`, infinities
/// and quiet NaNs). Otherwise, the full formula runs. This is the update of
/// a `W1` row whose pixel is dark in the whole batch: about a third of the
/// rows of an MNIST batch, which so skip their `sqrt`, `div` and the memory
/// traffic of their weights.
///
/// # Safety
/// As [`rmsprop_lanes`].
#[inline(always)]
pub(crate) unsafe fn rmsprop_lanes_no_grad<S: Simd>(w: *mut f32, v: *mut f32, c: RmsPropV<S::V>) {
    // SAFETY: forwarded contract.
    unsafe {
        let g = S::zero();
        let vn = update_velocity::<S>(v, g, c);
        if c.zero_step && S::all_positive(S::add(vn, c.eps)) {
            return;
        }
        apply_step::<S>(w, g, vn, c);
    }
}

/// One RMSprop step on a chunk (see [`rmsprop_lanes`]).
///
/// # Safety
/// The CPU runs `S`; `w`, `g` and `v` have equal lengths.
#[inline(always)]
pub(crate) unsafe fn rmsprop<S: Simd>(w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp) {
    let l = S::LANES;
    let body = w.len() / l * l;
    // SAFETY: every access covers LANES floats below `body <= len` of each
    // of the three equal-length slices; the CPU runs S (caller).
    unsafe {
        let c = RmsPropV::new::<S>(opt);
        for i in (0..body).step_by(l) {
            rmsprop_lanes::<S>(w.as_mut_ptr().add(i), v.as_mut_ptr().add(i), S::load(g.as_ptr().add(i)), c);
        }
    }
    rmsprop_serial(&mut w[body..], &g[body..], &mut v[body..], opt);
}
