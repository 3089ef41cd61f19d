//! Central finite differences in f64 against the analytic gradients that the
//! model computes with the scalar kernels' formulas, on every parameter
//! tensor. Coordinates where a perturbation would move a hidden
//! pre-activation across the ReLU kink are skipped (the loss is not
//! differentiable there).

mod common;
use common::Golden;
use kiln::model::{Batch, Model, Params};
use kiln::rng::{Rng, Stream};
use kiln_kernels::{scalar::Scalar, RmsProp};

const H: f64 = 1e-4;
const TOL: f64 = 1e-6;
const BATCH: usize = 16;
const SAMPLES: usize = 60;

struct Setup {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: Vec<u32>,
    params: Params<f64>,
}

impl Setup {
    fn new() -> Setup {
        let g = Golden::load();
        // Rows spread over the golden images, so labels vary.
        let rows = (0..BATCH as u32).map(|i| i * 23 % 384).collect();
        Setup { images: g.u8("images"), labels: g.u8("labels"), rows, params: g.params(0).cast::<f64>() }
    }

    fn batch(&self) -> Batch<'_> {
        Batch { pixels: &self.images, labels: &self.labels, rows: &self.rows }
    }

    /// Mean loss with the given parameters.
    fn loss(&self, params: &Params<f64>) -> f64 {
        let mut m = Model::new(&Scalar, params, RmsProp::default(), BATCH);
        m.forward(self.batch()).loss_sum / BATCH as f64
    }

    /// Hidden pre-activations `Z = X W1 + b1`, `(B, H)`, for the kink test.
    fn preactivations(&self) -> Vec<f64> {
        let h = self.params.hidden;
        let t = self.params.tensors();
        let mut z = Vec::with_capacity(BATCH * h);
        for &r in &self.rows {
            let x = &self.images[r as usize * 784..(r as usize + 1) * 784];
            for j in 0..h {
                let s: f64 = (0..784).map(|k| f64::from(x[k]) / 255.0 * t.w1[k * h + j]).sum();
                z.push(s + t.b1[j]);
            }
        }
        z
    }
}

/// Checks `SAMPLES` coordinates of the tensor at arena `offset..offset+len`,
/// skipping those for which `near_kink(index)` holds. Returns how many were
/// compared.
fn check_tensor(
    s: &Setup,
    analytic: &Params<f64>,
    name: &str,
    offset: usize,
    len: usize,
    pick: &mut dyn FnMut() -> usize,
    near_kink: &dyn Fn(usize) -> bool,
) -> usize {
    let mut compared = 0;
    let mut worst = 0f64;
    for _ in 0..SAMPLES {
        let i = pick();
        assert!(i < len);
        if near_kink(i) {
            continue;
        }
        let mut plus = s.params.clone();
        plus.data[offset + i] += H;
        let mut minus = s.params.clone();
        minus.data[offset + i] -= H;
        let numeric = (s.loss(&plus) - s.loss(&minus)) / (2.0 * H);
        let a = analytic.data[offset + i];
        let scale = a.abs().max(numeric.abs());
        let err = if scale == 0.0 { 0.0 } else { (a - numeric).abs() / scale.max(1e-7) };
        worst = worst.max(err);
        assert!(err < TOL, "{name}[{i}]: analytic {a:e}, numeric {numeric:e}, relative error {err:.2e}");
        compared += 1;
    }
    eprintln!("{name}: {compared} coordinates compared, worst relative error {worst:.2e}");
    compared
}

#[test]
fn analytic_gradients_match_central_differences_in_f64() {
    let s = Setup::new();
    let h = s.params.hidden;
    let mut m = Model::new(&Scalar, &s.params, RmsProp::default(), BATCH);
    m.forward_backward(s.batch());
    let analytic = m.grads.clone();
    let z = s.preactivations();
    let mut rng = Rng::new(99, Stream::Shuffle(0));
    let pixel = |b: usize, k: usize| f64::from(s.images[s.rows[b] as usize * 784 + k]) / 255.0;
    // W1 (784, H): only pixels lit somewhere in the batch have a gradient;
    // sample those, and skip (k, j) when some row's z[b, j] is within
    // H * x[b, k] of zero.
    let lit: Vec<usize> = (0..784).filter(|&k| (0..BATCH).any(|b| pixel(b, k) > 0.0)).collect();
    let n = check_tensor(
        &s,
        &analytic,
        "W1",
        0,
        784 * h,
        &mut || lit[rng.below(lit.len() as u64) as usize] * h + rng.below(h as u64) as usize,
        &|i| (0..BATCH).any(|b| z[b * h + i % h].abs() <= 2.0 * H * pixel(b, i / h)),
    );
    assert!(n >= SAMPLES / 2, "too few W1 coordinates away from the kink: {n}");
    let mut rng = Rng::new(98, Stream::Shuffle(0));
    let n = check_tensor(&s, &analytic, "b1", 784 * h, h, &mut || rng.below(h as u64) as usize, &|j| {
        (0..BATCH).any(|b| z[b * h + j].abs() <= 2.0 * H)
    });
    assert!(n >= SAMPLES / 2, "too few b1 coordinates away from the kink: {n}");
    let mut rng = Rng::new(97, Stream::Shuffle(0));
    let off = 784 * h + h;
    let n = check_tensor(&s, &analytic, "W2", off, h * 10, &mut || rng.below(h as u64 * 10) as usize, &|_| false);
    assert_eq!(n, SAMPLES);
    let mut rng = Rng::new(96, Stream::Shuffle(0));
    let n = check_tensor(&s, &analytic, "b2", off + h * 10, 10, &mut || rng.below(10) as usize, &|_| false);
    assert_eq!(n, SAMPLES);
}

/// The check can fail: a gradient deliberately off by 1e-4 relative is caught.
#[test]
fn gradient_check_detects_a_wrong_gradient() {
    let s = Setup::new();
    let mut m = Model::new(&Scalar, &s.params, RmsProp::default(), BATCH);
    m.forward_backward(s.batch());
    let mut wrong = m.grads.clone();
    let off = 784 * s.params.hidden + s.params.hidden;
    wrong.data[off] *= 1.0 + 1e-4;
    let result = std::panic::catch_unwind(|| {
        check_tensor(&s, &wrong, "W2", off, 1, &mut || 0, &|_| false);
    });
    assert!(result.is_err(), "a 1e-4 relative error in dW2[0] went unnoticed");
}
