//! [`Inputs`]: what a model reads, u8 pixels or f32 features.

use kiln_kernels::{AlignedVec, Real};

/// A whole dataset's inputs, `(R, D)` row-major: u8 pixels, which the
/// input layer reads as `pixel / 255` straight from the (mapped) data, or
/// f32 features, which it reads as a hidden layer reads activations (the
/// batch's rows gathered first).
///
/// ```
/// use kiln::model::Inputs;
/// let pixels = vec![0u8, 255];
/// assert_eq!(Inputs::from(&pixels).len(), 2);
/// let features = [0.5f32, -1.25, 3.0];
/// assert!(matches!(Inputs::from(&features[..]), Inputs::Features(_)));
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Inputs<'a> {
    /// u8 pixels, seen as `pixel / 255` (Keras's `astype("float32") / 255`).
    Pixels(&'a [u8]),
    /// f32 features, as they are.
    Features(&'a [f32]),
}

impl Inputs<'_> {
    /// Values in all (rows times width).
    pub fn len(&self) -> usize {
        match self {
            Inputs::Pixels(p) => p.len(),
            Inputs::Features(x) => x.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `out (B, D) := inputs[rows]` in `T`, pixels as `pixel / 255`.
    /// Panics when a row is out of range.
    pub(crate) fn gather<T: Real>(&self, out: &mut [T], rows: &[u32], d: usize) {
        let d = d.max(1);
        match *self {
            Inputs::Pixels(pixels) => {
                let lut = kiln_kernels::pixel_table::<T>();
                for (o, &r) in out.chunks_exact_mut(d).zip(rows) {
                    for (v, &p) in o.iter_mut().zip(&pixels[r as usize * d..(r as usize + 1) * d]) {
                        *v = lut[usize::from(p)];
                    }
                }
            }
            Inputs::Features(x) => {
                for (o, &r) in out.chunks_exact_mut(d).zip(rows) {
                    for (v, &f) in o.iter_mut().zip(&x[r as usize * d..(r as usize + 1) * d]) {
                        *v = T::from_f64(f64::from(f));
                    }
                }
            }
        }
    }
}

/// `buf` holding at least `len` values (grown, zeroed, when it is smaller).
pub(crate) fn at_least<T: Real>(buf: &mut AlignedVec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        *buf = AlignedVec::zeroed(len);
    }
    &mut buf[..len]
}

/// `From` a slice, `Vec` or array of u8 (pixels) or f32 (features).
macro_rules! inputs_from {
    ($variant:ident, $t:ty) => {
        impl<'a> From<&'a [$t]> for Inputs<'a> {
            fn from(v: &'a [$t]) -> Self {
                Inputs::$variant(v)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Inputs<'a> {
            fn from(v: &'a Vec<$t>) -> Self {
                Inputs::$variant(v)
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Inputs<'a> {
            fn from(v: &'a [$t; N]) -> Self {
                Inputs::$variant(v)
            }
        }
    };
}
inputs_from!(Pixels, u8);
inputs_from!(Features, f32);

/// The pixels `x` holds, when every value is exactly `k / 255` in f32 for
/// an integer `k` in `0..=255` (what `images.astype("float32") / 255`
/// gives): then training on the pixels computes the same bits as on `x`,
/// through the faster u8 input layer. `None` for any other value
/// (including `-0.0`, which is not `0 / 255` bit for bit).
///
/// ```
/// let x: Vec<f32> = [0u8, 1, 128, 255].iter().map(|&k| f32::from(k) / 255.0).collect();
/// assert_eq!(kiln::model::exact_pixels(&x), Some(vec![0, 1, 128, 255]));
/// assert_eq!(kiln::model::exact_pixels(&[0.5]), None);
/// assert_eq!(kiln::model::exact_pixels(&[f32::NAN]), None);
/// ```
pub fn exact_pixels(x: &[f32]) -> Option<Vec<u8>> {
    let lut = kiln_kernels::pixel_table::<f32>();
    let mut out = Vec::with_capacity(x.len());
    for &v in x {
        let k = (v * 255.0).round();
        if !(0.0..=255.0).contains(&k) {
            return None;
        }
        let k = k as u8;
        if lut[usize::from(k)].to_bits() != v.to_bits() {
            return None;
        }
        out.push(k);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_pixels_accepts_every_k_over_255_and_nothing_near_it() {
        let all: Vec<f32> = (0..=255u8).map(|k| f32::from(k) / 255.0).collect();
        assert_eq!(exact_pixels(&all), Some((0..=255).collect()));
        for k in 1..=255u8 {
            let v = f32::from(k) / 255.0;
            for near in [f32::from_bits(v.to_bits() + 1), f32::from_bits(v.to_bits() - 1)] {
                assert_eq!(exact_pixels(&[near]), None, "{near} next to {k}/255");
            }
        }
        for bad in [-0.0, 1.0 + f32::EPSILON, -1.0 / 255.0, f32::INFINITY, f32::NAN, 256.0 / 255.0] {
            assert_eq!(exact_pixels(&[0.0, bad]), None, "{bad}");
        }
    }
}
