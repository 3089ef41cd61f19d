//! The small structs [`Backend`](crate::Backend)'s ops take their operands
//! in, so that every op reads in one order: what it writes first (outputs,
//! then the fused [`Update`](crate::Update) of the weights), then what it
//! reads, then how ([`Activation`], [`Layer1Path`](crate::Layer1Path)), and
//! the [`Dims`](crate::Dims) last. They carry slices only; each op checks
//! their lengths against the dimensions.

use crate::Activation;

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
/// written in terms of the output, as TensorFlow writes it).
#[derive(Clone, Copy, Debug)]
pub struct Derivative<'a, T> {
    /// The activation of the layer whose output `out` is.
    pub act: Activation,
    /// `A (B, K)`: that layer's output.
    pub out: &'a [T],
}

impl<'a, T> Derivative<'a, T> {
    /// The derivative of `act` at its output `out`.
    pub fn new(act: Activation, out: &'a [T]) -> Self {
        Derivative { act, out }
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
