//! [`Predictor`]: inference only, the weights and one batch's activations.

use super::arena::{arena_slots, forward_hidden, pack_into, Mode, Slot};
use super::{Arch, Inputs, Params};
use anyhow::{ensure, Result};
use kiln_kernels::{AlignedVec, Backend, Layer1Path, Real};

/// A network that predicts, and nothing more: its weights in the
/// backend's layout and one batch's activations. No gradients, no
/// optimizer state, no labels: what `predict` and `serve` run. Its
/// probabilities are bit-identical to those of a [`Model`](super::Model)'s forward pass
/// on the same backend (the same kernels, and the output layer's
/// [`Backend::output_softmax`]).
///
/// The weights are shared (reference-counted) between a predictor and its
/// [`Predictor::fork`]s, so a pool of them, one per thread, holds one copy.
///
/// ```
/// use kiln::model::{Activation, Params, Predictor, Sequential};
/// let arch = Sequential::new(4).dense(3, Activation::Relu).dense(2, Activation::Softmax).build().unwrap();
/// let be = kiln::kernels::select("auto").unwrap();
/// let mut p = Predictor::new(be, &Params::glorot(&arch, 1), 8);
/// let probs = p.predict(&[0, 255, 7, 9, 255, 255, 0, 1]).unwrap(); // two images
/// assert_eq!(probs.len(), 2);
/// assert!((probs[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
/// let mut other = p.fork(1); // another thread's, same weights
/// assert_eq!(other.predict(&[0, 255, 7, 9]).unwrap()[0], probs[0]);
/// ```
pub struct Predictor<'b, T: Real = f32> {
    be: &'b dyn Backend<T>,
    weights: std::sync::Arc<Weights<T>>,
    path: Layer1Path,
    /// `(B, U_l)` outputs of the hidden layers.
    acts: Vec<AlignedVec<T>>,
    /// `(B, D)` the gathered input: of a one-layer network, and of f32 features (grown when first needed).
    input: AlignedVec<T>,
    /// `(B, C)` probabilities.
    p: AlignedVec<T>,
    capacity: usize,
}

/// A network's weights in a backend's layout, read-only.
struct Weights<T: Real> {
    arch: Arch,
    slots: Vec<Slot>,
    values: AlignedVec<T>,
}

impl<'b, T: Real> Predictor<'b, T> {
    /// A predictor of `params` on `be` for batches of up to `capacity`
    /// images (at least 1; [`Predictor::predict`] takes any number, in
    /// batches of that many).
    pub fn new(be: &'b dyn Backend<T>, params: &Params<T>, capacity: usize) -> Self {
        let (slots, len) = arena_slots(be, &params.arch);
        let mut values = AlignedVec::zeroed(len);
        pack_into(&slots, params, &mut values);
        let weights = std::sync::Arc::new(Weights { arch: params.arch.clone(), slots, values });
        Self::with_weights(be, weights, capacity)
    }

    fn with_weights(be: &'b dyn Backend<T>, weights: std::sync::Arc<Weights<T>>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let arch = &weights.arch;
        let hidden = &arch.dense[..arch.dense.len() - 1];
        let buf = |w: usize| AlignedVec::zeroed(capacity * w);
        Predictor {
            be,
            acts: hidden.iter().map(|d| buf(d.units)).collect(),
            input: if hidden.is_empty() { buf(arch.inputs) } else { AlignedVec::zeroed(0) },
            p: buf(arch.classes()),
            capacity,
            path: Layer1Path::Auto,
            weights,
        }
    }

    /// Another predictor of the same weights (not copied) with activations
    /// of its own for batches of up to `capacity`: one per thread.
    pub fn fork(&self, capacity: usize) -> Self {
        let mut p = Self::with_weights(self.be, std::sync::Arc::clone(&self.weights), capacity);
        p.path = self.path;
        p
    }

    /// The layers.
    pub fn arch(&self) -> &Arch {
        &self.weights.arch
    }

    /// Softmax probabilities `(B, C)` of rows `rows` of `inputs` (`(R, D)`
    /// u8 images or f32 features). Panics when there are more rows than the
    /// capacity or a row is out of range.
    pub fn probs<'x>(&mut self, inputs: impl Into<Inputs<'x>>, rows: &[u32]) -> &[T] {
        let b = rows.len();
        assert!(b <= self.capacity, "batch of {b} rows exceeds the capacity {}", self.capacity);
        let Weights { arch, slots, values } = &*self.weights;
        let a = forward_hidden(
            self.be,
            (arch, slots, values),
            (&mut self.acts, &mut self.input, Mode::Inference),
            (inputs.into(), rows, None),
            self.path,
            |_| {},
        );
        let s = &slots[slots.len() - 1];
        let p = &mut self.p[..b * s.dims.n];
        let w = kiln_kernels::Weights::new(&values[s.kernel.clone()], &values[s.bias.clone()]);
        self.be.output_softmax(p, a, w, s.dims);
        p
    }

    /// Softmax probabilities of every row of `inputs` (`N` images of `D`
    /// u8 pixels, or `N` rows of `D` f32 features, row-major), one `Vec` of
    /// `C` per row; an error when `inputs` is not a whole number of rows.
    pub fn predict<'x>(&mut self, inputs: impl Into<Inputs<'x>>) -> Result<Vec<Vec<T>>> {
        let c = self.arch().classes();
        Ok(self.probabilities(inputs)?.chunks_exact(c).map(<[T]>::to_vec).collect())
    }

    /// [`predict`](Self::predict)'s probabilities as one row-major `N x C`
    /// buffer, with no allocation per row (what a large `N` wants).
    pub fn probabilities<'x>(&mut self, inputs: impl Into<Inputs<'x>>) -> Result<Vec<T>> {
        let inputs = inputs.into();
        let (d, c) = (self.arch().inputs, self.arch().classes());
        let what = if matches!(inputs, Inputs::Pixels(_)) { "pixels" } else { "values" };
        ensure!(
            inputs.len().is_multiple_of(d),
            "{} {what} are not a whole number of rows of {d} (the model's input)",
            inputs.len()
        );
        let n = inputs.len() / d;
        ensure!(n <= u32::MAX as usize, "{n} rows: more than 2^32");
        let mut out = Vec::with_capacity(n * c);
        let mut chunk = Vec::with_capacity(self.capacity.min(n));
        for start in (0..n).step_by(self.capacity.max(1)) {
            chunk.clear();
            // Fits: n <= u32::MAX was checked above.
            chunk.extend(start as u32..(start + self.capacity).min(n) as u32);
            out.extend_from_slice(self.probs(inputs, &chunk));
        }
        Ok(out)
    }
}

/// Softmax probabilities `(N, C)` of `inputs` (`N` images of `D` u8
/// pixels, or `N` rows of `D` f32 features, row-major), computed with
/// `params` on `be`, one `Vec` of `C` per row; an error when `inputs` is
/// not a whole number of rows.
pub fn predict<'x>(
    be: &dyn Backend<f32>,
    params: &Params<f32>,
    inputs: impl Into<Inputs<'x>>,
) -> Result<Vec<Vec<f32>>> {
    let inputs = inputs.into();
    let n = inputs.len() / params.arch.inputs;
    Predictor::new(be, params, n.clamp(1, 1024)).predict(inputs)
}

/// [`predict`]'s probabilities as one row-major `N x C` buffer.
///
/// ```
/// use kiln::model::{predict, probabilities, Activation, Params, Sequential};
/// let arch = Sequential::new(3).dense(4, Activation::Relu).dense(2, Activation::Softmax).build().unwrap();
/// let params = Params::glorot(&arch, 7);
/// let be = kiln::kernels::select("auto").unwrap();
/// let rows = [0, 9, 255, 3, 3, 3];
/// assert_eq!(probabilities(be, &params, &rows).unwrap(), predict(be, &params, &rows).unwrap().concat());
/// ```
pub fn probabilities<'x>(
    be: &dyn Backend<f32>,
    params: &Params<f32>,
    inputs: impl Into<Inputs<'x>>,
) -> Result<Vec<f32>> {
    let inputs = inputs.into();
    let n = inputs.len() / params.arch.inputs;
    Predictor::new(be, params, n.clamp(1, 1024)).probabilities(inputs)
}

#[cfg(test)]
mod tests {
    use super::super::{Batch, Model};
    use super::*;
    use crate::rng::{Rng, Stream};
    use kiln_kernels::Optimizer;

    /// A predictor's probabilities are a training model's forward
    /// probabilities, bit for bit, for one-layer and deeper networks, on
    /// every backend, for batches of any size.
    #[test]
    fn a_predictor_gives_the_training_forwards_probabilities() {
        let mut rng = Rng::new(3, Stream::InitKernel(0));
        let pixels: Vec<u8> = (0..70 * 64).map(|_| (rng.next_f64() * 256.0) as u8 % 255).collect();
        let labels = vec![0u8; 70];
        for spec in ["4:softmax", "32:relu,4:softmax", "24:tanh,16:sigmoid,8:linear,4:softmax"] {
            let arch = Arch::parse(spec, 64, 4).unwrap();
            let params = Params::glorot(&arch, 5);
            for name in kiln_kernels::available_backends() {
                let be = kiln_kernels::select(name).unwrap();
                let mut model = Model::new(be, &params, Optimizer::default()).unwrap();
                let rows: Vec<u32> = (0..70).collect();
                for capacity in [1, 9, 70] {
                    // The same batches both ways (BLAS's bits depend on the
                    // batch size; kiln's kernels' do not).
                    let mut want = Vec::new();
                    for chunk in rows.chunks(capacity) {
                        model.forward(Batch { inputs: Inputs::Pixels(&pixels), labels: &labels, rows: chunk });
                        want.extend(model.probs(chunk.len()).iter().map(|v| v.to_bits()));
                    }
                    let got = Predictor::new(be, &params, capacity).predict(&pixels).unwrap();
                    let got: Vec<u32> = got.iter().flatten().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{spec} on {name}, capacity {capacity}");
                }
            }
        }
    }
}
