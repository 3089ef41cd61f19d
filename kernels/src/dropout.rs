//! Dropout's elementwise work, shared by every backend (it is exact
//! arithmetic, the same bits on any): each row's mask drawn from a 32-bit
//! key by a counter-based hash, applied to the output of the Dense layer
//! below (forward), and the gradient through it (backward).
//!
//! A value is kept when its 23-bit uniform `k` (the hash's top 23 bits)
//! satisfies `k * 2^-23 >= rate`, TensorFlow's `uniform float32 >= rate`;
//! the caller turns the rate into the integer `threshold` once.
//!
//! The loops are plain Rust written so the compiler vectorizes them; on
//! x86-64 they are compiled a second and third time for AVX2 and AVX-512
//! (32-bit multiplies are slow to emulate on the SSE2 baseline) and the
//! best the CPU runs is detected once, at the first call ([`Build`]); the
//! backward likewise (its masks and the activation's derivative).

use crate::{Activation, Flushed, Real};

/// Wellons's `lowbias32`: a bijection of u32 with low bias.
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Whether unit `j` of the row keyed `key` is kept.
#[inline(always)]
fn kept(key: u32, j: usize, threshold: u32) -> bool {
    lowbias32(key.wrapping_add((j as u32).wrapping_mul(0x9E37_79B9))) >> 9 >= threshold
}

/// One row's mask: `keep[j] = 1` when unit `j` is kept (the reference for
/// [`dropout_forward`]'s masks).
pub fn dropout_mask(keep: &mut [u8], key: u32, threshold: u32) {
    for (j, k) in keep.iter_mut().enumerate() {
        *k = u8::from(kept(key, j, threshold));
    }
}

#[inline(always)]
fn forward_rows<T: Real>(a: &mut [T], keep: &mut [u8], keys: &[u32], threshold: u32, scale: T) {
    let n = a.len() / keys.len().max(1);
    for ((row, mask), &key) in a.chunks_exact_mut(n.max(1)).zip(keep.chunks_exact_mut(n.max(1))).zip(keys) {
        for (j, (v, k)) in row.iter_mut().zip(mask.iter_mut()).enumerate() {
            let keep = kept(key, j, threshold);
            *k = u8::from(keep);
            // `(x * scale) * keep` as TensorFlow computes it: a dropped
            // value is a signed zero (or NaN from a non-finite one).
            let x = *v * scale;
            *v = if keep { x } else { x * T::zero() };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_rows_avx2<T: Real>(a: &mut [T], keep: &mut [u8], keys: &[u32], threshold: u32, scale: T) {
    forward_rows(a, keep, keys, threshold, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn forward_rows_avx512<T: Real>(a: &mut [T], keep: &mut [u8], keys: &[u32], threshold: u32, scale: T) {
    forward_rows(a, keep, keys, threshold, scale);
}

/// The builds of the forward and backward passes, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Baseline,
}

impl Build {
    /// The best build this CPU runs, detected once.
    fn best() -> Build {
        static BEST: std::sync::OnceLock<Build> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    return Build::Avx512;
                }
                if is_x86_feature_detected!("avx2") {
                    return Build::Avx2;
                }
            }
            Build::Baseline
        })
    }
}

/// One Dropout's training forward over `a` (`(B, n)`, in place), row `i`'s
/// mask drawn from `keys[i]`: `keep := mask` (`(B, n)`, 1 = kept) and `a :=
/// (a * scale) * keep`.
///
/// ```
/// let mut a = vec![1.0f32; 8];
/// let mut keep = vec![0u8; 8];
/// kiln_kernels::dropout_forward(&mut a, &mut keep, &[7, 8], 1 << 22, 2.0); // rate 0.5
/// for (v, k) in a.iter().zip(&keep) {
///     assert_eq!(*v, if *k == 1 { 2.0 } else { 0.0 });
/// }
/// ```
pub fn dropout_forward<T: Real>(a: &mut [T], keep: &mut [u8], keys: &[u32], threshold: u32, scale: T) {
    assert!(
        a.len() == keep.len() && a.len().is_multiple_of(keys.len().max(1)),
        "dropout_forward: {} values, {} mask bytes, {} rows",
        a.len(),
        keep.len(),
        keys.len()
    );
    let _flushed = Flushed::new();
    match Build::best() {
        // SAFETY: the function's target features were detected on this CPU
        // (`Build::best`).
        #[cfg(target_arch = "x86_64")]
        Build::Avx512 => unsafe { forward_rows_avx512(a, keep, keys, threshold, scale) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Build::Avx2 => unsafe { forward_rows_avx2(a, keep, keys, threshold, scale) },
        Build::Baseline => forward_rows(a, keep, keys, threshold, scale),
    }
}

/// The gradient through Dropouts (their masks `keeps` and scales `scales`,
/// in forward order) after a layer with activation `act` and output `h`:
/// `g` holds the gradient with respect to the last Dropout's output and
/// becomes the gradient with respect to the layer's pre-activation, `g :=
/// act'(h, (g * keep) * scale)` through each Dropout, the last first.
///
/// ```
/// use kiln_kernels::{dropout_backward, Activation};
/// let mut g = vec![1.0f32, 1.0];
/// dropout_backward(&mut g, &[&[1, 0]], &[2.0], Activation::Tanh, &[0.5, 0.5]);
/// assert_eq!(g, [1.5, 0.0]); // 2 * (1 - 0.25), and dropped
/// ```
pub fn dropout_backward<T: Real>(g: &mut [T], keeps: &[&[u8]], scales: &[T], act: Activation, h: &[T]) {
    assert!(
        keeps.len() == scales.len() && keeps.iter().all(|k| k.len() == g.len()) && h.len() == g.len(),
        "dropout_backward: mismatched lengths"
    );
    backward_slices(std::iter::once((g, 0)), keeps, scales, act, h, 0);
}

/// [`dropout_backward`] on each `(g, at)` of `slices`, `g` being elements
/// `at .. at + g.len()` of the masks and of `out` (whose first element is
/// element `out_at`), chosen and dispatched once for them all: an input
/// gradient's claim applies it to each of its rows' columns.
pub(crate) fn backward_slices<'g, T: Real>(
    slices: impl Iterator<Item = (&'g mut [T], usize)>,
    keeps: &[&[u8]],
    scales: &[T],
    act: Activation,
    out: &[T],
    out_at: usize,
) {
    assert!(keeps.len() == scales.len(), "dropout_backward: {} masks, {} scales", keeps.len(), scales.len());
    let through = Through { keeps, scales, act, out, out_at };
    let _flushed = Flushed::new();
    match Build::best() {
        // SAFETY: the function's target features were detected on this CPU
        // (`Build::best`).
        #[cfg(target_arch = "x86_64")]
        Build::Avx512 => unsafe { backward_rows_avx512(slices, through) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Build::Avx2 => unsafe { backward_rows_avx2(slices, through) },
        Build::Baseline => backward_each(slices, through),
    }
}

/// What [`backward_slices`] multiplies by: the masks and their scales, then
/// the activation's derivative at `out` (whose first element is element
/// `out_at`).
#[derive(Clone, Copy)]
struct Through<'a, T> {
    keeps: &'a [&'a [u8]],
    scales: &'a [T],
    act: Activation,
    out: &'a [T],
    out_at: usize,
}

/// [`backward_rows`] on each slice (see [`backward_slices`]).
#[inline(always)]
fn backward_each<'g, T: Real>(slices: impl Iterator<Item = (&'g mut [T], usize)>, t: Through<'_, T>) {
    for (g, at) in slices {
        let h = &t.out[at - t.out_at..at - t.out_at + g.len()];
        assert!(t.keeps.iter().all(|k| k.len() >= at + g.len()), "dropout_backward: a mask is too short");
        backward_rows(g, (t.keeps, at), t.scales, t.act, h);
    }
}

#[inline(always)]
fn backward_rows<T: Real>(g: &mut [T], (keeps, at): (&[&[u8]], usize), scales: &[T], act: Activation, h: &[T]) {
    for (keep, &s) in keeps.iter().zip(scales).rev() {
        for (v, &k) in g.iter_mut().zip(&keep[at..]) {
            let kept = if k != 0 { *v } else { *v * T::zero() };
            *v = kept * s;
        }
    }
    // One loop per activation, each compiled with its formula inlined (the
    // match has no wildcard: a new activation must be placed here).
    #[inline(always)]
    fn each<T: Real>(h: &[T], g: &mut [T], f: impl Fn(T, T) -> T) {
        for (v, &y) in g.iter_mut().zip(h) {
            *v = f(y, *v);
        }
    }
    match act {
        Activation::Relu => each(h, g, |y, v| Activation::Relu.backward(y, v)),
        Activation::Sigmoid => each(h, g, |y, v| Activation::Sigmoid.backward(y, v)),
        Activation::Tanh => each(h, g, |y, v| Activation::Tanh.backward(y, v)),
        Activation::Linear | Activation::Softmax => {}
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn backward_rows_avx2<'g, T: Real>(slices: impl Iterator<Item = (&'g mut [T], usize)>, t: Through<'_, T>) {
    backward_each(slices, t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn backward_rows_avx512<'g, T: Real>(slices: impl Iterator<Item = (&'g mut [T], usize)>, t: Through<'_, T>) {
    backward_each(slices, t);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward's AVX2 and AVX-512 builds give the baseline's bits, for
    /// every activation, one and two masks, odd widths, signed zeros, NaN
    /// and infinities among the gradients.
    #[test]
    fn every_compiled_backward_gives_the_baselines_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for n in [1usize, 3, 15, 16, 17, 33, 100, 513] {
            let h: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.37).sin() * 3.0).max(-0.5)).collect();
            let mut g0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos() * 2.0).collect();
            for (i, special) in [-0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
                if let Some(v) = g0.get_mut(i * 5) {
                    *v = special;
                }
            }
            let k1: Vec<u8> = (0..n).map(|i| u8::from(i % 3 != 0)).collect();
            let k2: Vec<u8> = (0..n).map(|i| u8::from(i % 4 != 1)).collect();
            for act in Activation::ALL {
                for (keeps, scales) in [(vec![&k1[..]], vec![1.25f32]), (vec![&k1[..], &k2[..]], vec![1.25, 2.0])] {
                    let mut want = g0.clone();
                    backward_rows(&mut want, (&keeps, 0), &scales, act, &h);
                    #[cfg(target_arch = "x86_64")]
                    for (name, ok) in [
                        ("avx2", is_x86_feature_detected!("avx2")),
                        ("avx512", is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")),
                    ] {
                        if !ok {
                            continue;
                        }
                        let mut got = g0.clone();
                        let through = Through { keeps: &keeps, scales: &scales, act, out: &h, out_at: 0 };
                        // SAFETY: the features were detected just above.
                        unsafe {
                            if name == "avx2" {
                                backward_rows_avx2(std::iter::once((&mut got[..], 0)), through);
                            } else {
                                backward_rows_avx512(std::iter::once((&mut got[..], 0)), through);
                            }
                        }
                        assert_eq!(bits(&got), bits(&want), "{name}, {act:?}, n = {n}");
                    }
                    let mut public = g0.clone();
                    dropout_backward(&mut public, &keeps, &scales, act, &h);
                    assert_eq!(bits(&public), bits(&want), "{act:?}, n = {n}");
                }
            }
        }
    }

    #[test]
    fn every_compiled_variant_draws_the_reference_mask_and_bits() {
        // Odd widths and tiny ones, so vector tails are covered.
        for n in [1usize, 3, 15, 16, 17, 33, 100, 513] {
            let keys: Vec<u32> = (0..5u32).map(|i| i.wrapping_mul(0x1234_5677) ^ 0xdead_beef).collect();
            let h: Vec<f32> = (0..5 * n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let (t, s) = (1_677_722, 1.25f32);
            let mut want = h.clone();
            let mut want_keep = vec![0u8; 5 * n];
            for ((row, mask), &key) in want.chunks_exact_mut(n).zip(want_keep.chunks_exact_mut(n)).zip(&keys) {
                dropout_mask(mask, key, t);
                for (v, &k) in row.iter_mut().zip(mask.iter()) {
                    *v = (*v * s) * f32::from(k);
                }
            }
            let mut got = h.clone();
            let mut keep = vec![0u8; 5 * n];
            dropout_forward(&mut got, &mut keep, &keys, t, s);
            assert_eq!(keep, want_keep, "n = {n}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "n = {n}");
            #[cfg(target_arch = "x86_64")]
            for (name, ok) in [
                ("avx2", is_x86_feature_detected!("avx2")),
                ("avx512", is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")),
            ] {
                if !ok {
                    continue;
                }
                let mut v = h.clone();
                let mut k = vec![0u8; 5 * n];
                // SAFETY: the features were detected just above.
                unsafe {
                    if name == "avx2" {
                        forward_rows_avx2(&mut v, &mut k, &keys, t, s);
                    } else {
                        forward_rows_avx512(&mut v, &mut k, &keys, t, s);
                    }
                }
                assert_eq!((k, bits(&v)), (want_keep.clone(), bits(&want)), "{name}, n = {n}");
            }
        }
    }

    #[test]
    fn backward_applies_each_mask_last_first_then_the_derivative() {
        let h = [0.5f64, -0.25, 0.75, 0.0];
        let mut g = vec![1.0, 2.0, 3.0, 4.0];
        dropout_backward(&mut g, &[&[1, 1, 0, 1], &[1, 0, 1, 1]], &[2.0, 1.25], Activation::Sigmoid, &h);
        let d = |y: f64, v: f64| v * y * (1.0 - y);
        assert_eq!(g, vec![d(0.5, 1.0 * 1.25 * 2.0), 0.0, 0.0, d(0.0, 4.0 * 1.25 * 2.0)]);
        let mut r = vec![1.0f32, 1.0];
        dropout_backward(&mut r, &[&[1, 1]], &[2.0], Activation::Relu, &[0.0, 0.1]);
        assert_eq!(r, [0.0, 2.0]);
    }
}
