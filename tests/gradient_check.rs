//! Central finite differences in f64 against the analytic gradients that the
//! model computes with the scalar kernels' formulas, on every kernel and
//! every bias of two networks: the tutorial shape with a small hidden width
//! (784 -> 16 relu -> 10 softmax) and a deeper one that uses every
//! activation (784 -> 12 tanh -> 8 sigmoid -> 6 linear -> 5 relu -> 10
//! softmax), on a batch of real MNIST images; and both again with Dropout
//! layers, their masks fixed (those of the first update, seed `SEED`).
//!
//! The loss is not differentiable where a ReLU pre-activation is zero, so a
//! coordinate is skipped when perturbing it by `+-H` flips the sign of any
//! ReLU pre-activation of any row, in any layer. The pre-activations come
//! from a plain f64 forward pass written here (which also reproduces the
//! model's loss, so it is checked to be the same function).

use kiln::model::{dropout_keep_mask, Activation, Arch, Batch, Inputs, Layer, Model, Params};
use kiln::rng::{Rng, Stream};
use kiln_kernels::{scalar::Scalar, RmsProp};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;

/// The step of the central differences.
const H: f64 = 1e-4;
/// The largest relative error `|a - n| / max(|a|, |n|, 1e-7)` accepted.
const TOL: f64 = 1e-6;
const BATCH: usize = 16;
/// Coordinates of an input-layer kernel sampled from the pixels lit
/// somewhere in the batch (the others have no gradient), and from the dark
/// ones; every other tensor is checked at every coordinate.
const LIT_SAMPLES: usize = 300;
const DARK_SAMPLES: usize = 20;
/// Cross-entropy's clip bound (its gradient ignores the clip, so the check
/// needs every probability well inside it).
const CLIP: f64 = 1e-7;
/// The seed of the models' Dropout masks.
const SEED: u64 = 5;

/// MNIST training images and labels: the inputs of the Keras golden file.
fn mnist() -> (Vec<u8>, Vec<u8>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-rmsprop-h64.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden file parses");
    let get = |name: &str| {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    };
    (get("images"), get("labels"))
}

/// One network at one point, on one batch.
struct Case {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: Vec<u32>,
    params: Params<f64>,
}

/// The plain forward pass: each layer's pre-activations `(B, U_l)` (the
/// output layer's are the logits), the mean clipped cross-entropy, and the
/// smallest and largest probability.
struct Forward {
    z: Vec<Vec<f64>>,
    loss: f64,
    p_range: (f64, f64),
}

/// One tensor of a [`Params`].
#[derive(Clone, Copy, Debug)]
enum Tensor {
    Kernel(usize),
    Bias(usize),
}

impl Tensor {
    fn all(arch: &Arch) -> Vec<Tensor> {
        (0..arch.dense().len()).flat_map(|l| [Tensor::Kernel(l), Tensor::Bias(l)]).collect()
    }

    fn name(self) -> String {
        match self {
            Tensor::Kernel(l) => format!("dense_{}.kernel", l + 1),
            Tensor::Bias(l) => format!("dense_{}.bias", l + 1),
        }
    }

    fn of(self, p: &Params<f64>) -> &[f64] {
        match self {
            Tensor::Kernel(l) => p.kernel(l),
            Tensor::Bias(l) => p.bias(l),
        }
    }

    fn of_mut(self, p: &mut Params<f64>) -> &mut [f64] {
        match self {
            Tensor::Kernel(l) => p.kernel_mut(l),
            Tensor::Bias(l) => p.bias_mut(l),
        }
    }
}

/// What checking some coordinates of one tensor found.
#[derive(Debug, Default)]
struct Report {
    /// Compared with the central difference.
    compared: usize,
    /// Of those, how many had both gradients exactly zero.
    zero: usize,
    /// Skipped: a perturbation crosses a ReLU kink.
    skipped: usize,
    worst: f64,
    failures: Vec<String>,
}

impl Case {
    /// `spec` on 784 pixels and 10 classes, with Glorot kernels from `seed`
    /// and small random biases (so that no bias sits at the special point 0).
    fn new(spec: &str, seed: u64) -> Case {
        let (images, labels) = mnist();
        let arch = Arch::parse(spec, 784, 10).unwrap();
        let mut params = Params::<f64>::glorot(&arch, seed);
        let mut rng = Rng::new(seed, Stream::Shuffle(7));
        for l in 0..arch.dense().len() {
            for b in params.bias_mut(l) {
                *b = 0.2 * (2.0 * rng.next_f64() - 1.0);
            }
        }
        // Rows spread over the images, so labels vary.
        let rows: Vec<u32> = (0..BATCH as u32).map(|i| i * 23 % 384).collect();
        let classes: BTreeSet<u8> = rows.iter().map(|&r| labels[r as usize]).collect();
        assert!(classes.len() >= 5, "the batch covers only the labels {classes:?}");
        Case { images, labels, rows, params }
    }

    fn arch(&self) -> &Arch {
        self.params.arch()
    }

    fn batch(&self) -> Batch<'_> {
        Batch { inputs: Inputs::Pixels(&self.images), labels: &self.labels, rows: &self.rows }
    }

    fn pixel(&self, b: usize, k: usize) -> f64 {
        f64::from(self.images[self.rows[b] as usize * 784 + k]) / 255.0
    }

    /// The model's mean loss with `params`: in training mode when the
    /// network has Dropout (the masks of the first update: none is applied
    /// here), else the forward pass alone.
    fn loss(&self, model: &mut Model<'_, f64>, params: &Params<f64>) -> f64 {
        model.set_params(params);
        let stats =
            if self.arch().has_dropout() { model.forward_backward(self.batch()) } else { model.forward(self.batch()) };
        stats.loss_sum / BATCH as f64
    }

    /// The plain f64 forward pass with `p`.
    fn reference(&self, p: &Params<f64>) -> Forward {
        let arch = p.arch();
        let mut a: Vec<f64> =
            (0..BATCH).flat_map(|b| (0..784).map(move |k| (b, k))).map(|(b, k)| self.pixel(b, k)).collect();
        let mut zs = Vec::new();
        let (mut l, mut dropouts) = (0, 0);
        for layer in arch.layers() {
            let d = match layer {
                Layer::Dense(d) => d,
                Layer::Dropout(d) => {
                    // Training: (a * scale) * keep, the mask the model draws.
                    let (scale, n) = (1.0 / (1.0 - d.rate()), arch.kernel_shape(l - 1).1);
                    for (b, row) in a.chunks_exact_mut(n).enumerate() {
                        let keep = dropout_keep_mask(SEED, dropouts, 0, self.rows[b], n, d.rate());
                        for (v, k) in row.iter_mut().zip(keep) {
                            *v = if k { *v * scale } else { 0.0 };
                        }
                    }
                    dropouts += 1;
                    continue;
                }
            };
            let (k, n) = arch.kernel_shape(l);
            let (w, bias) = (p.kernel(l), p.bias(l));
            let mut z = vec![0.0; BATCH * n];
            for (zrow, arow) in z.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
                for (&av, wrow) in arow.iter().zip(w.chunks_exact(n)) {
                    for (acc, &wv) in zrow.iter_mut().zip(wrow) {
                        *acc += av * wv;
                    }
                }
                for (acc, &bv) in zrow.iter_mut().zip(bias) {
                    *acc += bv;
                }
            }
            // Softmax is applied below, with the loss (`apply` leaves it as is).
            a = z.iter().map(|&v| d.activation.apply(v)).collect();
            zs.push(z);
            l += 1;
        }
        let c = arch.classes();
        let (mut loss, mut lo, mut hi) = (0.0, 1f64, 0f64);
        for (b, logits) in zs.last().expect("an output layer").chunks_exact(c).enumerate() {
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|v| (v - max).exp()).sum();
            for v in logits {
                let p = (v - max).exp() / sum;
                (lo, hi) = (lo.min(p), hi.max(p));
            }
            let y = usize::from(self.labels[self.rows[b] as usize]);
            loss -= ((logits[y] - max).exp() / sum).clamp(CLIP, 1.0 - CLIP).ln();
        }
        Forward { z: zs, loss: loss / BATCH as f64, p_range: (lo, hi) }
    }

    /// Whether some ReLU pre-activation has a different sign in `other`
    /// than in `base` (or sits too close to zero in `base` to tell the
    /// model's rounding from this test's).
    fn crosses_kink(&self, base: &Forward, other: &Forward) -> bool {
        self.arch()
            .dense()
            .iter()
            .zip(base.z.iter().zip(&other.z))
            .filter(|(d, _)| d.activation == Activation::Relu)
            .any(|(_, (z0, z1))| z0.iter().zip(z1).any(|(&u, &v)| (u > 0.0) != (v > 0.0) || u.abs() < 1e-12))
    }

    /// Compares `analytic` with central differences of the model's loss at
    /// the `coords` of tensor `t`.
    fn check(
        &self,
        model: &mut Model<'_, f64>,
        base: &Forward,
        analytic: &Params<f64>,
        t: Tensor,
        coords: &[usize],
    ) -> Report {
        let mut r = Report::default();
        for &i in coords {
            let (mut plus, mut minus) = (self.params.clone(), self.params.clone());
            t.of_mut(&mut plus)[i] += H;
            t.of_mut(&mut minus)[i] -= H;
            if self.crosses_kink(base, &self.reference(&plus)) || self.crosses_kink(base, &self.reference(&minus)) {
                r.skipped += 1;
                continue;
            }
            // The step actually taken (w + H and w - H are rounded).
            let step = t.of(&plus)[i] - t.of(&minus)[i];
            let numeric = (self.loss(model, &plus) - self.loss(model, &minus)) / step;
            let a = t.of(analytic)[i];
            let scale = a.abs().max(numeric.abs());
            let err = if scale == 0.0 { 0.0 } else { (a - numeric).abs() / scale.max(1e-7) };
            r.worst = r.worst.max(err);
            if err >= TOL {
                r.failures
                    .push(format!("{}[{i}]: analytic {a:e}, numeric {numeric:e}, relative error {err:.2e}", t.name()));
            }
            r.compared += 1;
            r.zero += usize::from(a == 0.0 && numeric == 0.0);
        }
        r
    }

    /// The coordinates of `t` the main check compares: all of them, except
    /// for the input layer's kernel, where `LIT_SAMPLES` distinct (pixel,
    /// unit) pairs on pixels lit somewhere in the batch and `DARK_SAMPLES`
    /// on dark pixels are drawn.
    fn coords(&self, t: Tensor, seed: u64) -> Vec<usize> {
        let n = self.arch().kernel_shape(0).1;
        match t {
            Tensor::Kernel(0) => {
                let (lit, dark): (Vec<usize>, Vec<usize>) =
                    (0..784).partition(|&k| (0..BATCH).any(|b| self.pixel(b, k) > 0.0));
                assert!(lit.len() * n >= 2 * LIT_SAMPLES, "too few lit pixels: {}", lit.len());
                let mut rng = Rng::new(seed, Stream::Shuffle(0));
                let mut draw = |from: &[usize], count: usize| {
                    let mut picked = BTreeSet::new();
                    while picked.len() < count {
                        picked.insert(from[rng.below(from.len() as u64) as usize] * n + rng.below(n as u64) as usize);
                    }
                    picked
                };
                let mut v: Vec<usize> = draw(&lit, LIT_SAMPLES).into_iter().collect();
                v.extend(draw(&dark, DARK_SAMPLES));
                v
            }
            t => (0..t.of(&self.params).len()).collect(),
        }
    }

    /// The analytic gradients, after checking that the model's loss is the
    /// plain forward's and that no probability is near the clip bounds.
    fn analytic(&self, model: &mut Model<'_, f64>, base: &Forward) -> Params<f64> {
        let loss = model.forward_backward(self.batch()).loss_sum / BATCH as f64;
        assert!((loss - base.loss).abs() <= 1e-12 * base.loss, "model loss {loss}, plain forward {}", base.loss);
        let (lo, hi) = base.p_range;
        assert!(lo > 1e3 * CLIP && hi < 1.0 - 1e3 * CLIP, "probabilities {lo:e} .. {hi} near the clip bounds");
        model.grads()
    }
}

/// Checks every tensor of `spec`; returns the total coordinates compared.
fn check_every_tensor(spec: &str, seed: u64) -> usize {
    let case = Case::new(spec, seed);
    let arch = case.arch().clone();
    let mut model = Model::new(&Scalar, &case.params, RmsProp::default()).unwrap().with_seed(SEED);
    let base = case.reference(&case.params);
    let analytic = case.analytic(&mut model, &base);
    // Exactly: a pixel dark in every row gives its kernel row no gradient.
    let n = arch.kernel_shape(0).1;
    let g1 = analytic.kernel(0);
    let dark: Vec<usize> = (0..784).filter(|&k| (0..BATCH).all(|b| case.pixel(b, k) == 0.0)).collect();
    assert!(dark.iter().all(|&k| g1[k * n..(k + 1) * n].iter().all(|&g| g == 0.0)), "a dark pixel has a gradient");
    eprintln!(
        "{}: loss {:.6}, {} dark pixels with exactly zero dense_1.kernel gradient",
        arch.spec(),
        base.loss,
        dark.len()
    );
    let mut total = 0;
    for (s, t) in Tensor::all(&arch).into_iter().enumerate() {
        let coords = case.coords(t, seed + s as u64);
        let r = case.check(&mut model, &base, &analytic, t, &coords);
        eprintln!(
            "{} {}: {} of {} coordinates compared ({} both exactly zero, {} skipped at a ReLU kink), worst relative error {:.2e}",
            arch.spec(),
            t.name(),
            r.compared,
            coords.len(),
            r.zero,
            r.skipped,
            r.worst
        );
        assert!(r.failures.is_empty(), "{} gradients differ:\n{}", r.failures.len(), r.failures.join("\n"));
        // Most coordinates are away from the kinks, and most of those carry
        // a gradient (not a trivial 0 = 0).
        assert!(r.compared * 10 >= coords.len() * 9, "{}: only {} of {} compared", t.name(), r.compared, coords.len());
        let nonzero = r.compared - r.zero;
        assert!(nonzero * 2 >= coords.len(), "{}: only {nonzero} nonzero gradients compared", t.name());
        total += r.compared;
    }
    total
}

#[test]
fn tutorial_shape_gradients_match_central_differences_in_f64() {
    let total = check_every_tensor("16:relu", 11);
    eprintln!("16:relu,10:softmax: {total} coordinates compared over 4 tensors");
}

#[test]
fn dropout_gradients_match_central_differences_with_the_masks_fixed() {
    let total = check_every_tensor("16:relu,dropout:0.5", 13);
    eprintln!("16:relu,dropout:0.5,10:softmax: {total} coordinates compared over 4 tensors");
    let spec = "12:tanh,dropout:0.3,dropout:0.2,8:sigmoid,dropout:0.1,6:linear,dropout:0,5:relu,dropout:0.4";
    let total = check_every_tensor(spec, 14);
    eprintln!("{spec}: {total} coordinates compared over 10 tensors");
}

#[test]
fn every_activation_gradients_match_central_differences_in_f64() {
    let spec = "12:tanh,8:sigmoid,6:linear,5:relu";
    // Every activation but the output layer's softmax: a new one is added here.
    for a in Activation::ALL.into_iter().filter(|a| a.applied() != kiln_kernels::Applied::WithLoss) {
        assert!(spec.split(',').any(|l| l.ends_with(&format!(":{}", a.name()))), "add {a} to this network");
    }
    let total = check_every_tensor(spec, 12);
    eprintln!("12:tanh,8:sigmoid,6:linear,5:relu,10:softmax: {total} coordinates compared over 10 tensors");
}

/// The check can fail: in every tensor of both networks, a gradient
/// deliberately off by 1e-4 relative (at its largest coordinate that the
/// check compares) is caught, while the true one passes there.
#[test]
fn gradient_check_detects_a_wrong_gradient_in_every_tensor() {
    for (spec, seed) in [("16:relu", 11), ("12:tanh,8:sigmoid,6:linear,5:relu", 12)] {
        let case = Case::new(spec, seed);
        let mut model = Model::new(&Scalar, &case.params, RmsProp::default()).unwrap();
        let base = case.reference(&case.params);
        let analytic = case.analytic(&mut model, &base);
        for t in Tensor::all(case.arch()) {
            let g = t.of(&analytic);
            let mut by_size: Vec<usize> = (0..g.len()).collect();
            by_size.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            let i = *by_size
                .iter()
                .find(|&&i| case.check(&mut model, &base, &analytic, t, &[i]).compared == 1)
                .expect("some coordinate away from the kinks");
            let right = case.check(&mut model, &base, &analytic, t, &[i]);
            assert!(right.failures.is_empty(), "{:?}", right.failures);
            let mut wrong = analytic.clone();
            t.of_mut(&mut wrong)[i] *= 1.0 + 1e-4;
            let caught = case.check(&mut model, &base, &wrong, t, &[i]);
            assert_eq!(caught.failures.len(), 1, "{spec} {}[{i}]: a 1e-4 relative error went unnoticed", t.name());
            eprintln!("{spec} {}[{i}] (gradient {:e}): {}", t.name(), g[i], caught.failures[0]);
        }
    }
}

/// The kink skip works, and is needed: with a ReLU pre-activation of one
/// row moved to `H / 4` above zero (in the input layer of the tutorial
/// shape, and in the fourth layer of the deep network), its bias coordinate
/// is skipped, and there the central difference does disagree with the
/// gradient.
#[test]
fn a_coordinate_across_a_relu_kink_is_skipped() {
    for (spec, seed, l) in [("16:relu", 11, 0), ("12:tanh,8:sigmoid,6:linear,5:relu", 12, 3)] {
        let mut case = Case::new(spec, seed);
        assert_eq!(case.arch().dense()[l].activation, Activation::Relu);
        let z = case.reference(&case.params).z.swap_remove(l);
        let j = (0..case.arch().dense()[l].units).find(|&j| z[j] > 0.1).expect("an active unit in row 0");
        case.params.bias_mut(l)[j] -= z[j] - H / 4.0;
        let base = case.reference(&case.params);
        assert!(base.z[l][j] > 0.0 && base.z[l][j] < H / 2.0, "z = {}", base.z[l][j]);
        let mut model = Model::new(&Scalar, &case.params, RmsProp::default()).unwrap();
        let analytic = case.analytic(&mut model, &base);
        let t = Tensor::Bias(l);
        let r = case.check(&mut model, &base, &analytic, t, &[j]);
        assert_eq!((r.skipped, r.compared), (1, 0), "{spec} {}[{j}]: {r:?}", t.name());
        let (mut plus, mut minus) = (case.params.clone(), case.params.clone());
        plus.bias_mut(l)[j] += H;
        minus.bias_mut(l)[j] -= H;
        let numeric = (case.loss(&mut model, &plus) - case.loss(&mut model, &minus)) / (2.0 * H);
        let a = analytic.bias(l)[j];
        let err = (a - numeric).abs() / a.abs().max(numeric.abs());
        eprintln!(
            "{spec} {}[{j}] across the kink: analytic {a:e}, numeric {numeric:e}, relative error {err:.2e}",
            t.name()
        );
        assert!(err >= TOL, "{spec} {}[{j}]: the kink did not show (relative error {err:.2e})", t.name());
    }
}
