//! The small structs [`Backend`](crate::Backend)'s ops take their operands
//! in, so that every op reads in one order: what it writes first (outputs,
//! then the fused [`Update`](crate::Update) of the weights), then what it
//! reads, then how ([`Activation`], [`Layer1Path`](crate::Layer1Path)), and
//! the [`Dims`](crate::Dims) last. They carry slices only; each op checks
//! their lengths against the dimensions.

use crate::Activation;
use crate::Real;

/// The rows `rows` of the row-major array `data` of a whole dataset: a
/// batch, gathered inside the op that reads it (pixels `(R, K)`, labels
/// `(R)`), so that no copy of the batch is ever made.
///
/// ```
/// use kiln_kernels::Rows;
/// let pixels = [0u8, 7, 0, 255]; // two images of two pixels
/// let batch = Rows::new(&pixels[..], &[1, 0]); // image 1, then image 0
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a, E> {
    /// The whole dataset, row-major.
    pub data: &'a [E],
    /// The batch: indices of rows of `data`, in the batch's order.
    pub rows: &'a [u32],
}

impl<'a, E> Rows<'a, E> {
    /// The rows `rows` of `data`.
    pub fn new(data: &'a [E], rows: &'a [u32]) -> Self {
        Rows { data, rows }
    }

    /// The batch size.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A Dense layer's parameters as a forward reads them: its kernel `W` and
/// bias `b`.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a, T> {
    /// `W (K, N)`, in the layout the op names.
    pub kernel: &'a [T],
    /// `b (N)`.
    pub bias: &'a [T],
}

impl<'a, T> Weights<'a, T> {
    /// The kernel and the bias.
    pub fn new(kernel: &'a [T], bias: &'a [T]) -> Self {
        Weights { kernel, bias }
    }
}

/// Where a weight gradient goes: `dW` and `db`.
#[derive(Debug)]
pub struct Grads<'a, T> {
    /// `dW (K, N)`, in the layout the op names.
    pub kernel: &'a mut [T],
    /// `db (N)`.
    pub bias: &'a mut [T],
}

impl<'a, T> Grads<'a, T> {
    /// `dW` and `db`.
    pub fn new(kernel: &'a mut [T], bias: &'a mut [T]) -> Self {
        Grads { kernel, bias }
    }
}

/// `act'(A)`, what an input gradient is multiplied by: the activation
/// `act` of the layer below and its output `A (B, K)` (the derivative is
/// written in terms of the output, as TensorFlow writes it), after the
/// masks of any Dropouts between that layer and this one
/// ([`Derivative::through_dropouts`]).
#[derive(Clone, Copy, Debug)]
pub struct Derivative<'a, T> {
    /// The activation of the layer whose output `out` is.
    pub act: Activation,
    /// `A (B, K)`: that layer's output.
    pub out: &'a [T],
    /// The Dropouts' masks (`(B, K)` bytes each, non-zero: kept), in
    /// forward order, and their scales; empty when there are none.
    keeps: &'a [&'a [u8]],
    scales: &'a [T],
}

impl<'a, T: Real> Derivative<'a, T> {
    /// The derivative of `act` at its output `out`.
    pub fn new(act: Activation, out: &'a [T]) -> Self {
        Derivative { act, out, keeps: &[], scales: &[] }
    }

    /// The gradient through Dropouts first (their masks `keeps`, each
    /// `(B, K)` like `out`, and scales `scales`, in forward order), then
    /// `act'`: `g := act'(A, (g * keep) * scale)` through each Dropout, the
    /// last first, as [`crate::dropout_backward`] computes it, inside the
    /// input gradient's own pass.
    ///
    /// ```
    /// use kiln_kernels::{scalar::Scalar, Activation, Backend, Derivative, Dims};
    /// let (h, keep) = ([0.5f32, 0.5], [1u8, 0]);
    /// let keeps = [&keep[..]];
    /// let below = Derivative::new(Activation::Relu, &h).through_dropouts(&keeps, &[2.0]);
    /// // dZ (1 x 1) = 3 and W (2 x 1) = [1, 1]: dA is [3, 3] before the derivative.
    /// let mut da = [0f32; 2];
    /// Scalar.output_backward_input(&mut da, &[3.0], &[1.0, 1.0], below, Dims { k: 2, n: 1 });
    /// assert_eq!(da, [6.0, 0.0]); // kept and scaled by 2, dropped
    /// ```
    ///
    /// # Panics
    /// When a mask is not as long as `out`, or `keeps` and `scales` differ
    /// in length.
    pub fn through_dropouts(self, keeps: &'a [&'a [u8]], scales: &'a [T]) -> Self {
        assert!(
            keeps.len() == scales.len() && keeps.iter().all(|k| k.len() == self.out.len()),
            "Derivative::through_dropouts: {} masks of lengths {:?} and {} scales for {} values",
            keeps.len(),
            keeps.iter().map(|k| k.len()).collect::<Vec<_>>(),
            scales.len(),
            self.out.len()
        );
        Derivative { keeps, scales, ..self }
    }

    /// Whether a Dropout's mask comes before `act'`.
    pub(crate) fn has_dropouts(&self) -> bool {
        !self.keeps.is_empty()
    }

    /// Multiplies `g`, the input gradient's elements `at .. at + g.len()`
    /// of `(B, K)`, by the derivative (Dropouts, then `act'`). Elementwise:
    /// any split of the elements gives the bits of one pass.
    pub(crate) fn apply(&self, g: &mut [T], at: usize) {
        self.apply_slices(std::iter::once((g, at)));
    }

    /// [`Derivative::apply`] on each `(g, at)` of `slices` (the rows of a
    /// block of columns), chosen and dispatched once for them all.
    pub(crate) fn apply_slices<'g>(&self, slices: impl Iterator<Item = (&'g mut [T], usize)>)
    where
        T: 'g,
    {
        if self.keeps.is_empty() {
            for (g, at) in slices {
                crate::shared::activation_backward(g, &self.out[at..at + g.len()], self.act);
            }
        } else {
            crate::dropout::backward_slices(slices, self.keeps, self.scales, self.act, self.out, 0);
        }
    }
}

/// The operands of a hidden layer's input gradient `dA := (dZ W^T) *
/// act'(A)`: `da (B, K)` written, `dz (B, N)`, the kernel `w` in the
/// backend's weight layout, and `below`, the derivative's layer.
#[derive(Debug)]
pub struct InputGrad<'a, T> {
    /// `dA (B, K)`, written.
    pub da: &'a mut [T],
    /// `dZ (B, N)`.
    pub dz: &'a [T],
    /// `W (K, N)` in [`crate::Backend::weight_layout`].
    pub w: &'a [T],
    /// The activation below and its output `A (B, K)`.
    pub below: Derivative<'a, T>,
}

impl<'a, T> InputGrad<'a, T> {
    /// `dA := (dZ W^T) * act'(A)` into `da`.
    pub fn new(da: &'a mut [T], dz: &'a [T], w: &'a [T], below: Derivative<'a, T>) -> Self {
        InputGrad { da, dz, w, below }
    }
}
