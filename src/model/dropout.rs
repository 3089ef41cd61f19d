//! The layers that act on each value of a Dense layer's output
//! ([`Elementwise`], Dropout today), forward and backward side by side:
//! Dropout's masks, drawn from a counter-based generator, applied to the
//! output of the Dense layer below it in training, and the gradient
//! through them.
//!
//! Semantics are Keras 3 on TensorFlow (`tf.nn.experimental.stateless_dropout`):
//! `y = (x * scale) * keep` with `scale = 1 / (1 - rate)` formed in f64 and
//! rounded once, `keep = [u >= rate]` for `u` uniform in `[0, 1)` on the
//! float32 grid of `2^-23`; the gradient is `(g * keep) * scale`. Inference
//! passes values unchanged: the inference path runs none of these layers
//! (`acts_in_inference`).
//!
//! A mask depends on (seed, which Dropout, update number, dataset row,
//! unit) and on nothing else: not on the thread count, the batch's order
//! or what ran before, so a resumed run draws the masks an uninterrupted
//! one would.

use super::arch::Elementwise;
use kiln_kernels::{Activation, Derivative, Real};
use std::ops::Range;

/// What keys one training step's masks.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepKey {
    /// The training seed.
    pub(super) seed: u64,
    /// Updates applied before this step (Keras's `optimizer.iterations`).
    pub(super) step: u64,
}

/// The 23-bit uniform `k` is kept when `k * 2^-23 >= rate` (rate rounded to
/// f32, as TensorFlow compares in the input's type): when `k >= threshold`.
fn threshold(rate: f64) -> u32 {
    // Exact: an f32 times 2^23 is representable in f64.
    (f64::from(rate as f32) * f64::from(1u32 << 23)).ceil() as u32
}

/// `1 / (1 - rate)` in f64, rounded once to `T`.
fn scale<T: Real>(rate: f64) -> T {
    T::from_f64(1.0 / (1.0 - rate))
}

/// SplitMix64's finalizer: a bijection of u64 with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one row's mask for the Dropout numbered `ordinal`.
fn row_key(key: StepKey, ordinal: u32, row: u32) -> u32 {
    let z = mix64(key.seed ^ (u64::from(ordinal) + 1).wrapping_mul(0xD605_BBB5_8C8A_BEC1));
    let z = mix64(z ^ key.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (mix64(z ^ u64::from(row)) >> 32) as u32
}

/// The mask the Dropout numbered `ordinal` (0-based, counting Dropouts
/// only) of rate `rate` draws for dataset row `row` of `units` values at
/// update `step` with `seed` (`true`: kept). For reference
/// implementations and tests: the model draws the same, in place.
///
/// ```
/// let keep = kiln::model::dropout_keep_mask(1, 0, 0, 7, 1000, 0.2);
/// let kept = keep.iter().filter(|&&k| k).count();
/// assert!((700..900).contains(&kept), "{kept}");
/// ```
#[doc(hidden)]
pub fn keep_mask(seed: u64, ordinal: u32, step: u64, row: u32, units: usize, rate: f64) -> Vec<bool> {
    let mut keep = vec![0u8; units];
    kiln_kernels::dropout_mask(&mut keep, row_key(StepKey { seed, step }, ordinal, row), threshold(rate));
    keep.into_iter().map(|k| k != 0).collect()
}

/// Whether any of `drops` changes values in training, so that the
/// training forward must run them and keep what their backward reads.
pub(super) fn acts_in_training(drops: &[Elementwise]) -> bool {
    drops.iter().any(|e| match e {
        Elementwise::Dropout(_) => true,
    })
}

/// Whether any of `drops` changes values in inference. None does yet (a
/// Dropout passes them through), so the inference path
/// (`arena::forward_hidden`) runs none of these layers; a kind that acts in
/// inference must be run there as well.
pub(super) fn acts_in_inference(drops: &[Elementwise]) -> bool {
    drops.iter().any(|e| match e {
        Elementwise::Dropout(_) => false,
    })
}

/// Bytes of masks the layers `drops` keep for a batch of `b` rows of `n`
/// units (each Dropout a mask).
pub(super) fn mask_len(drops: &[Elementwise], b: usize, n: usize) -> usize {
    drops
        .iter()
        .map(|e| match e {
            Elementwise::Dropout(_) => b * n,
        })
        .sum()
}

/// Training forward of the Dropouts `drops` (in order) over the output `h`
/// (`(B, n)`) of the Dense layer below, for the dataset rows `rows`: `a :=
/// drops(h)`, each Dropout's mask recorded in `keep` (`(drops, B, n)`).
pub(super) fn forward<T: Real>(
    drops: &[Elementwise],
    key: StepKey,
    rows: &[u32],
    (h, a, keep): (&[T], &mut [T], &mut [u8]),
) {
    let b = rows.len();
    let n = h.len() / b.max(1);
    let masks: Vec<&mut [u8]> = keep.chunks_exact_mut((b * n).max(1)).take(drops.len()).collect();
    in_halves((b, n), (h, a, masks), &|part, (h, a, masks)| {
        let rows = &rows[part];
        a.copy_from_slice(h);
        for (e, mask) in drops.iter().zip(masks) {
            match e {
                Elementwise::Dropout(at) => {
                    let keys: Vec<u32> = rows.iter().map(|&r| row_key(key, at.ordinal, r)).collect();
                    let (threshold, scale) = (threshold(at.dropout.rate()), scale(at.dropout.rate()));
                    kiln_kernels::dropout_forward(a, mask, &keys, threshold, scale);
                }
            }
        }
    });
}

/// The masks and scales of the Dropouts `drops` after a Dense layer of
/// `len` output values a batch (their masks laid out in `keep` one after
/// the other, as [`forward`] recorded them), for the input gradient above
/// them to apply ([`kernel_derivative`]).
pub(super) fn masks<'a, T: Real>(drops: &[Elementwise], keep: &'a [u8], len: usize) -> (Vec<&'a [u8]>, Vec<T>) {
    let keeps = keep.chunks_exact(len.max(1)).take(if len == 0 { 0 } else { drops.len() }).collect();
    let scales = drops
        .iter()
        .map(|e| match e {
            Elementwise::Dropout(at) => scale::<T>(at.dropout.rate()),
        })
        .collect();
    (keeps, scales)
}

/// Runs `f` on the `b` rows of `(h, out, masks)` (`n` values a row; one
/// mask per Dropout, each `(b, n)`) in two halves side by side, each with
/// its range of rows, on a pool of two or more threads (else once on all
/// of them). Each row's values depend on that row alone, so the halves give
/// the bits of one pass; one pass would leave a core idle (about 8 us a
/// Dropout of 128 x 512, AMD Zen 5).
fn in_halves<'a, T: Real>(
    (b, n): (usize, usize),
    (h, out, masks): (&'a [T], &'a mut [T], Vec<&'a mut [u8]>),
    f: &(impl Fn(Range<usize>, (&'a [T], &'a mut [T], Vec<&'a mut [u8]>)) + Sync),
) {
    if b < 2 || rayon::current_num_threads() < 2 {
        return f(0..b, (h, out, masks));
    }
    let half = b / 2;
    let (h0, h1) = h.split_at(half * n);
    let (o0, o1) = out.split_at_mut(half * n);
    let (m0, m1): (Vec<_>, Vec<_>) = masks.into_iter().map(|m| m.split_at_mut(half * n)).unzip();
    rayon::join(|| f(0..half, (h0, o0, m0)), || f(half..b, (h1, o1, m1)));
}

/// What the input gradient of the Dense layer above multiplies by, inside
/// its own pass: the activation at `a` when no Dropout (with a rate above
/// 0) sits between, else each Dropout's mask and scale (`(g * keep) *
/// scale`, the last Dropout first; [`masks`]) and then the activation at
/// the Dense layer's own output `h`, as Keras's gradient runs them.
pub(super) fn kernel_derivative<'a, T: Real>(
    act: Activation,
    a: &'a [T],
    h: &'a [T],
    (keeps, scales): &'a (Vec<&'a [u8]>, Vec<T>),
) -> Derivative<'a, T> {
    if keeps.is_empty() {
        Derivative::new(act, a)
    } else {
        Derivative::new(act, h).through_dropouts(keeps, scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dropout;

    fn at(ordinal: u32, rate: f64) -> Elementwise {
        Elementwise::Dropout(crate::model::arch::DropoutAt { ordinal, dropout: Dropout::new(rate).unwrap() })
    }

    #[test]
    fn kept_fraction_is_within_binomial_bounds() {
        for rate in [0.1, 0.2, 0.5, 0.9] {
            let (rows, n) = (200u32, 500usize);
            let mut keep = vec![0u8; n];
            let mut kept = 0u64;
            for step in 0..3 {
                for r in 0..rows {
                    kiln_kernels::dropout_mask(&mut keep, row_key(StepKey { seed: 7, step }, 0, r), threshold(rate));
                    kept += keep.iter().map(|&k| u64::from(k)).sum::<u64>();
                }
            }
            let trials = 3.0 * f64::from(rows) * n as f64;
            let (mean, sd) = (trials * (1.0 - rate), (trials * rate * (1.0 - rate)).sqrt());
            // Five standard deviations: a correct generator fails about once in 3.5 million.
            assert!((kept as f64 - mean).abs() < 5.0 * sd, "rate {rate}: kept {kept}, expected {mean} +- {sd}");
        }
    }

    #[test]
    fn masks_differ_by_seed_dropout_step_and_row_but_not_by_anything_else() {
        let mask = |seed, ordinal, step, row| {
            let mut k = vec![0u8; 256];
            kiln_kernels::dropout_mask(&mut k, row_key(StepKey { seed, step }, ordinal, row), threshold(0.5));
            k
        };
        let base = mask(1, 0, 5, 9);
        assert_eq!(base, mask(1, 0, 5, 9));
        for other in [mask(2, 0, 5, 9), mask(1, 1, 5, 9), mask(1, 0, 6, 9), mask(1, 0, 5, 10)] {
            let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
            assert!((90..=166).contains(&same), "masks should be independent: {same} of 256 agree");
        }
    }

    /// On two threads the forward's rows run in halves: the bits of one
    /// pass, for batches of every small size (odd ones split unevenly).
    #[test]
    fn forward_halves_on_two_threads_give_the_bits_of_one_pass() {
        let drops = [at(0, 0.3), at(1, 0.5)];
        let key = StepKey { seed: 9, step: 5 };
        let n = 7;
        let run = |threads: usize, b: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let rows: Vec<u32> = (0..b as u32).map(|r| r * 3 + 1).collect();
                let h: Vec<f32> = (0..b * n).map(|i| (i as f32 * 0.37).sin()).collect();
                let (mut a, mut keep) = (vec![0.0; b * n], vec![0u8; 2 * b * n]);
                forward(&drops, key, &rows, (&h, &mut a, &mut keep));
                (a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), keep)
            })
        };
        for b in 0..9 {
            let one = run(1, b);
            assert_eq!(run(2, b), one, "batch of {b}");
            assert_eq!(run(3, b), one, "batch of {b}");
            if b > 0 {
                assert!(one.1.contains(&0), "some value dropped");
            }
        }
    }

    #[test]
    fn the_threshold_follows_the_float32_grid_and_rate_0_keeps_everything() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), 1 << 22);
        // 0.2 rounds up to f32 0.2000000030, so k = 0.2 * 2^23 rounded up.
        assert_eq!(threshold(0.2), 1_677_722);
        assert_eq!(scale::<f32>(0.2), 1.25);
        assert_eq!(scale::<f32>(0.1), (1.0f64 / 0.9) as f32);
    }

    #[test]
    fn forward_and_backward_apply_each_mask_in_order_and_the_derivative_at_h() {
        let drops = [at(0, 0.5), at(1, 0.2)];
        let rows = [3u32, 8];
        let h: Vec<f64> = (0..8).map(|i| f64::from(i) * 0.25 - 1.0).collect();
        let mut a = vec![0.0; 8];
        let mut keep = vec![0u8; 16];
        let key = StepKey { seed: 4, step: 2 };
        forward(&drops, key, &rows, (&h, &mut a, &mut keep));
        let (s0, s1) = (2.0, 1.25);
        for i in 0..8 {
            let want = h[i] * s0 * f64::from(keep[i]) * s1 * f64::from(keep[8 + i]);
            assert_eq!(a[i], want, "value {i}");
        }
        // The backward: what the input gradient above applies.
        let masks = masks::<f64>(&drops, &keep, 8);
        assert_eq!((masks.0.len(), &masks.1[..]), (2, &[s0, s1][..]));
        let d = kernel_derivative(Activation::Tanh, &a, &h, &masks);
        assert!(d.act == Activation::Tanh && std::ptr::eq(d.out, &h[..]), "the derivative at h, before the masks");
        assert!(std::ptr::eq(kernel_derivative(Activation::Tanh, &a, &h, &(vec![], vec![])).out, &a[..]));
        let mut g = vec![1.0; 8];
        kiln_kernels::dropout_backward(&mut g, &masks.0, &masks.1, Activation::Tanh, &h);
        for i in 0..8 {
            let want = f64::from(keep[i]) * f64::from(keep[8 + i]) * s1 * s0 * (1.0 - h[i] * h[i]);
            assert_eq!(g[i], want, "gradient {i}");
        }
    }
}
