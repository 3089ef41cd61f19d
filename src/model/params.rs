//! [`Params`]: a network's parameters as Keras keeps them.

use super::Arch;
use crate::rng::{Rng, Stream};
use anyhow::{ensure, Result};
use kiln_kernels::{AlignedVec, Real};
use std::ops::Range;

/// The parameters of a model as Keras keeps them: for each layer, its kernel
/// `(in, out)` row-major (`y = x @ kernel + bias`) and its bias, in one
/// vector. The shapes always match the [`Arch`].
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T: Real> {
    pub(super) arch: Arch,
    data: AlignedVec<T>,
}

impl<T: Real> Params<T> {
    /// All zeros.
    pub fn zeros(arch: &Arch) -> Self {
        Params { arch: arch.clone(), data: AlignedVec::zeroed(arch.parameters()) }
    }

    /// The parameters of `arch` from `data` in [`Params`] order, or an error
    /// when the length does not match.
    pub fn from_vec(arch: &Arch, data: Vec<T>) -> Result<Self> {
        ensure!(
            data.len() == arch.parameters(),
            "{} values given; the layers {} have {} parameters",
            data.len(),
            arch.spec(),
            arch.parameters()
        );
        Ok(Params { arch: arch.clone(), data: data.into_iter().collect() })
    }

    /// Keras's defaults: Glorot-uniform kernels, uniform in
    /// `+-sqrt(6 / (fan_in + fan_out))`, each drawn from its own stream of
    /// `seed`, and zero biases.
    pub fn glorot(arch: &Arch, seed: u64) -> Self {
        let mut p = Self::zeros(arch);
        for l in 0..arch.dense.len() {
            let (fan_in, fan_out) = arch.kernel_shape(l);
            let mut rng = Rng::new(seed, Stream::InitKernel(l as u32));
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            for v in p.kernel_mut(l) {
                *v = T::from_f64((2.0 * rng.next_f64() - 1.0) * limit);
            }
        }
        p
    }

    /// The architecture these parameters belong to.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    fn range(&self, l: usize, bias: bool) -> Range<usize> {
        let mut at = 0;
        for m in 0..l {
            let (i, o) = self.arch.kernel_shape(m);
            at += i * o + o;
        }
        let (i, o) = self.arch.kernel_shape(l);
        if bias {
            at + i * o..at + i * o + o
        } else {
            at..at + i * o
        }
    }

    /// Layer `l`'s kernel, `(in, out)` row-major.
    pub fn kernel(&self, l: usize) -> &[T] {
        &self.data[self.range(l, false)]
    }

    /// Layer `l`'s kernel, mutably.
    pub fn kernel_mut(&mut self, l: usize) -> &mut [T] {
        let r = self.range(l, false);
        &mut self.data[r]
    }

    /// Layer `l`'s bias.
    pub fn bias(&self, l: usize) -> &[T] {
        &self.data[self.range(l, true)]
    }

    /// Layer `l`'s bias, mutably.
    pub fn bias_mut(&mut self, l: usize) -> &mut [T] {
        let r = self.range(l, true);
        &mut self.data[r]
    }

    /// Every value, in order (layer by layer, kernel then bias).
    pub fn values(&self) -> &[T] {
        &self.data
    }

    /// Every value, mutably (the shapes cannot change).
    pub fn values_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The same values in another element type (rounded to nearest).
    pub fn cast<U: Real>(&self) -> Params<U> {
        Params { arch: self.arch.clone(), data: self.data.iter().map(|&v| U::from_f64(v.to_f64())).collect() }
    }

    /// The tensors as a model file names them, in order: `dense_K.kernel`
    /// `(in, out)` and `dense_K.bias` for K = 1..n.
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let mut out = Vec::new();
        for l in 0..self.arch.dense.len() {
            let (i, o) = self.arch.kernel_shape(l);
            out.push((format!("dense_{}.kernel", l + 1), vec![i, o], self.kernel(l)));
            out.push((format!("dense_{}.bias", l + 1), vec![o], self.bias(l)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_layer_keeps_the_earlier_layers_initial_weights() {
        let two = Params::<f32>::glorot(&Arch::parse("64:relu", 784, 10).unwrap(), 3);
        let three = Params::<f32>::glorot(&Arch::parse("64:relu,32:relu", 784, 10).unwrap(), 3);
        assert_eq!(two.kernel(0), three.kernel(0));
        assert!(three.bias(0).iter().chain(three.bias(2)).all(|&b| b == 0.0));
    }
}
