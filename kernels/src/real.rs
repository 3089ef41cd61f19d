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
}
