//! Compute kernels for kiln's dense networks. This crate knows nothing of
//! MNIST or of files: it sees row-major matrices, row indices and labels.
//!
//! # Conventions (once, for every op)
//!
//! * Every matrix is **row-major** and densely packed: an `(M, N)` matrix `A`
//!   is a slice of `M * N` elements and `A[i, j]` is `a[i * N + j]`; the one
//!   exception is a kernel in a [`PanelLayout`] (below).
//! * Dimensions are named once: `B` batch rows, `K` the inner (reduction)
//!   dimension, `N` output columns, `R` rows of a whole dataset.
//! * Products are written in BLAS order, `C := alpha * op(A) * op(B) + beta * C`.
//!   Every op below has `alpha = 1` and `beta = 0`. **`beta = 0` means the
//!   output is write-only**: its previous contents are never read (they may be
//!   NaN) and are fully overwritten, like BLAS's `sgemm` with `beta = 0`.
//! * Inputs given as `u8` pixels are seen as `x = pixel / 255`, rounded once
//!   to the element type (exactly Keras's `images.astype("float32") / 255`).
//!   A batch of such rows is a list of row indices `rows` into the whole
//!   `(R, K)` dataset: the gather and the conversion happen inside the kernel,
//!   so no `(B, K)` float copy of the batch ever exists.
//! * A kernel reduces along `K` (or along the batch for weight gradients) in
//!   an order that does not depend on how many threads run it, so results are
//!   bit-identical for any thread count.
//! * Subnormal floats are flushed to zero (inputs and results), as
//!   TensorFlow's and JAX's compute threads flush them: every op runs under a
//!   [`Flushed`] guard on the calling thread and on each thread that runs one
//!   of its parallel tasks, and the caller's thread gets its own mode back
//!   when the op returns (`denormals.rs`).
//!
//! # The ops of one training step, layer by layer
//!
//! A network is a stack of Dense layers: the **input** layer reads the u8
//! pixels, **hidden** layers read the f32 activations of the layer below,
//! and the **output** layer (few columns: the classes) is fused with
//! softmax cross-entropy. `act` is the layer's [`Activation`]; `A` is the
//! layer's input, `act(Z)` its output.
//!
//! | op | operation | shapes |
//! |---|---|---|
//! | [`Backend::input_forward`] | `H := act(X W + b)`, `X = x[rows] / 255` | `H (B,N)`, `x (R,K)`, `W (K,N)` in layout |
//! | [`Backend::input_backward`] | `dW := X^T dZ`; `db := sum_i dZ[i, :]` (+ fused update) | `dW (K,N)` in layout |
//! | [`Backend::overlap_input_lists`], [`Backend::input_backward_listed`] | the same, with the batch's non-zero pixels listed on another thread while the layers above run their backward | as above |
//! | [`Backend::hidden_forward`] | `H := act(A W + b)` | `A (B,K)`, `W (K,N)` in layout |
//! | [`Backend::hidden_backward`] | `dW := A^T dZ`; `db` (+ fused update) | `dW (K,N)` in layout |
//! | [`Backend::hidden_backward_input`] | `dA := (dZ W^T) * act'(A)` | `W (K,N)` in layout |
//! | [`Backend::output_softmax_xent`] | `P := softmax(A W + b)`; `loss = sum_i -ln clip(P[i, y_i])`; `dZ := (P - onehot(y)) / B` | `W (K,N)` row-major |
//! | [`Backend::output_backward`] | `dW := A^T dZ`; `db` | `dW (K,N)` row-major |
//! | [`Backend::output_backward_input`] | `dA := (dZ W^T) * act'(A)` | `W (K,N)` row-major |
//! | [`Backend::update`] | one optimizer step ([`Optimizer`]: RMSprop, SGD, Adam, AdamW) of `w` with gradient `g` | flat, elementwise |
//!
//! `act'(A)` is the activation's derivative written in terms of its output,
//! as TensorFlow writes it ([`Activation::backward`]). The input gradient
//! of the input layer is never computed: nothing needs it.
//!
//! A fused update ([`Update`]: the weights, the optimizer's state arrays and
//! the step's coefficients) applies the optimizer to `W` as its gradient is
//! produced: the same result bit for bit as storing `dW` and calling
//! [`Backend::update`], without a second pass over memory.
//!
//! The BLAS backend is the exception to `beta = 0` internally (it broadcasts
//! the bias into `C` and calls `sgemm` with `beta = 1`), never in what it
//! reads: its outputs are still fully written before being read.
//!
//! `clip` bounds a probability to `[1e-7, 1 - 1e-7]` as Keras does; the
//! gradient `dZ` is taken from the unclipped probabilities.
//!
//! # Kernels of the input and hidden layers live in the backend's layout
//!
//! Those kernels are read by every step and written by every update;
//! repacking them for each product would cost a pass over memory each time.
//! So their ops read `W` and write `dW` in the backend's [`PanelLayout`]
//! ([`Backend::weight_layout`]): panels of `nr` columns, each a row-major
//! `(K, nr)` block, zero-padded past column `N`. A model keeps those
//! kernels, their gradients and their optimizer state in that layout (the
//! update is elementwise and does not care) and converts only when saving,
//! loading or comparing. With `nr >= N` the layout is plain row-major; the
//! scalar and BLAS backends use that. The output layer's kernel is always
//! row-major.
//!
//! # Zeros
//!
//! The SIMD backends can run the input layer's two products sparse,
//! skipping zero pixels, and a hidden layer's three, skipping the zeros a
//! ReLU leaves ([`Layer1Path`], chosen per call, `sparse.rs`); the results
//! are bit-identical to the dense path, so this is purely a choice of
//! speed.
//!
//! Every backend implements [`Backend`]; the model code only ever talks to a
//! `&dyn Backend<T>`, so a new backend slots in without touching it.
//! [`scalar`] is the plain reference every other backend is tested against;
//! it is generic over [`Real`] so that the gradient checks run the very same
//! formulas in `f64`.
//!
//! Every op takes its operands in one order: what it writes (outputs, then
//! a fused [`Update`]), what it reads, how ([`Activation`], [`Layer1Path`]),
//! and the [`Dims`] last; a batch of a dataset's rows is a [`Rows`], a
//! layer's parameters a [`Weights`], a weight gradient's outputs a
//! [`Grads`], and `act'(A)` a [`Derivative`].
//!
//! # Modules, bottom up
//! `simd` (one vector type per instruction set), `denormals` (the
//! floating-point mode) < `gemm`, `sparse`, `small`
//! (generic kernel bodies), `optim` (the update's maths), `shared` (helpers
//! every backend calls), `dropout` (Dropout's masks and elementwise passes,
//! the same bits on every backend) < `isa` (the SIMD backends), `scalar`,
//! `blas`.

#![warn(missing_docs)]

mod activation;
mod aligned;
mod backend;
mod caches;
mod denormals;
mod dropout;
mod gemm;
mod isa;
mod layout;
mod operands;
mod optim;
mod par;
mod params;
mod peak;
mod prefetch;
mod real;
mod select;
mod shared;
mod simd;
mod small;
mod sparse;

pub use activation::{Activation, Applied};
pub use aligned::AlignedVec;
pub use backend::scalar;
pub use caches::{blocking, Blocking};
pub use denormals::{flushing, Flushed};
pub use dropout::{dropout_backward, dropout_forward, dropout_mask};
pub use layout::{Dims, PanelLayout};
pub use operands::{Derivative, Grads, InputGrad, Rows, Weights};
pub use optim::{
    update_serial, Adam, ArgError, KerasArgs, KerasArgsError, KerasValue, Optimizer, RmsProp, Schedule, Sgd, Step,
    Update, MAX_SLOTS,
};
pub use par::{placement, round_trip, runs_side_by_side, side_by_side, with_placement, Placement, FAR_ROUND_TRIP};
pub use prefetch::prefetch_rows;
pub use real::Real;
pub use select::{available_backends, select, simd_backends, SelectError, BACKEND_NAMES};
pub use shared::{argmax, pixel_table, softmax_xent_row, softmax_xent_rows};

/// Probabilities are clipped to `[CLIP, 1 - CLIP]` before the logarithm of the
/// cross-entropy, as Keras does (`keras.backend.epsilon()`).
pub const CLIP: f64 = 1e-7;

/// What one core of this machine does at most with the instruction mixes of
/// kiln's kernels, measured by [`Backend::ceilings`] on data that stays in
/// L1: the bounds a kernel's speed is read against, below the FMA peak.
///
/// ```
/// if let Some(c) = kiln_kernels::select("auto").unwrap().ceilings(0.01) {
///     assert!(c.fma_peak > 0.0 && c.tile_from_l1 > 0.0 && c.load_per_fma > 0.0 && c.sqrt_div_ns > 0.0);
///     println!("{} GFLOP/s peak; {}x{} tile {} GFLOP/s", c.fma_peak, c.tile.0, c.tile.1, c.tile_from_l1);
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// Independent register-only FMA chains, GFLOP/s (as
    /// [`Backend::fma_peak_gflops`]).
    pub fma_peak: f64,
    /// The register tile of the packed GEMM, rows x columns.
    pub tile: (usize, usize),
    /// The GEMM microkernel itself on packed panels in L1 (a vector load
    /// of B per column vector and a broadcast of A per row each step),
    /// GFLOP/s: what the dense products reach at most.
    pub tile_from_l1: f64,
    /// FMAs that each take one vector loaded from L1, GFLOP/s: the sparse
    /// products' pattern (each weight row, or `dZ` row, is loaded for one
    /// FMA per vector), what they reach at most.
    pub load_per_fma: f64,
    /// Nanoseconds per vector of `b / sqrt(v)`, RMSprop's two correctly
    /// rounded operations (throughput, independent chains): the floor of
    /// every parameter update whose gradient is not zero.
    pub sqrt_div_ns: f64,
}

/// What [`Backend::output_softmax_xent`] reports about a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentStats<T> {
    /// `sum_i -ln clip(P[i, y_i])` over the batch (not yet divided by `B`).
    pub loss_sum: T,
    /// How many rows have `argmax_j P[i, j] == y_i` (first maximum wins).
    pub correct: usize,
}

/// How the products treat zeros in their left operand (SIMD backends): the
/// input layer's zero pixels, and a hidden layer's zero inputs (and the
/// zeros of its output gradient, in its input gradient).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layer1Path {
    /// Sparse when the batch's density of non-zeros is low, else dense.
    #[default]
    Auto,
    /// Always the dense packed GEMM.
    Dense,
    /// Always skip zeros.
    Sparse,
}

impl std::str::FromStr for Layer1Path {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Layer1Path::Auto),
            "dense" => Ok(Layer1Path::Dense),
            "sparse" => Ok(Layer1Path::Sparse),
            _ => Err(format!("unknown layer-1 path `{s}`; expected auto, dense or sparse")),
        }
    }
}

impl std::fmt::Display for Layer1Path {
    /// The name `--layer1` takes: `auto`, `dense`, `sparse`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer1Path::Auto => "auto",
            Layer1Path::Dense => "dense",
            Layer1Path::Sparse => "sparse",
        })
    }
}

/// A batch (`x[rows]`, `k` pixels an image) and, when a backend listed
/// them ahead ([`Backend::overlap_input_lists`]), its non-zero pixels by
/// pixel, for [`Backend::input_backward_listed`]. It borrows the batch, so
/// the lists cannot go stale.
///
/// ```
/// use kiln_kernels::{scalar::Scalar, Backend, Dims, Grads, Layer1Path, Rows};
/// // Two images of two pixels; the batch is image 1, then image 0.
/// let (x, rows) = ([0u8, 7, 0, 255], [1u32, 0]);
/// let be: &dyn Backend<f32> = &Scalar;
/// let mut above_ran = false;
/// let lists = be.overlap_input_lists(Rows::new(&x, &rows), 2, Layer1Path::Auto, &mut || above_ran = true);
/// let (mut dw, mut db) = ([0f32; 2], [0f32; 1]);
/// let dz = [1.0, 2.0]; // (B, N) = (2, 1)
/// let grads = Grads::new(&mut dw, &mut db);
/// be.input_backward_listed(grads, None, lists, &dz, Layer1Path::Auto, Dims { k: 2, n: 1 });
/// assert!(above_ran);
/// assert_eq!(dw, [0.0, 1.0 * 1.0 + 2.0 * (7.0 / 255.0)]);
/// assert_eq!(db, [3.0]);
/// ```
pub struct InputLists<'x> {
    x: Rows<'x, u8>,
    k: usize,
    csc: Option<sparse::Csc>,
}

/// One implementation of every op a training step needs (see the crate
/// documentation for the exact contract of each).
///
/// Every method checks the lengths of its slices against the shapes and
/// panics with a message on a mismatch: a mismatch is a bug in the caller,
/// never a property of user input. Work may be split over the current rayon
/// thread pool (inside a side of [`side_by_side`], run on the calling thread
/// alone); results never depend on the number of threads. An op that
/// takes an [`Update`] leaves its `dW` with unspecified contents when one is
/// given (the backend may never store the gradient).
pub trait Backend<T: Real>: Sync {
    /// The name shown to users (`scalar`, `avx2`, ...).
    fn name(&self) -> &'static str;

    /// One line for the train banner: the name and what runs behind it.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// The FMA peak of one core in this backend's instruction set, in
    /// GFLOP/s, measured on the calling thread for at least `seconds`; `None`
    /// for backends that are not one instruction set (scalar, BLAS).
    fn fma_peak_gflops(&self, seconds: f64) -> Option<f64> {
        let _ = seconds;
        None
    }

    /// The ceilings below the FMA peak that this backend's kernels meet on
    /// one core (see [`Ceilings`]), each probe measured on the calling
    /// thread for at least `seconds`; `None` for backends that are not one
    /// instruction set (scalar, BLAS).
    fn ceilings(&self, seconds: f64) -> Option<Ceilings> {
        let _ = seconds;
        None
    }

    /// The layout of `W` and `dW` in the input and hidden ops for a `(K, N)`
    /// kernel (see the crate docs); every other matrix is row-major.
    fn weight_layout(&self, k: usize, n: usize) -> PanelLayout {
        PanelLayout::row_major(k, n)
    }

    /// `H (B,N) := act(X W + b)` with `X = x[rows] / 255` (`x` is `(R,K)`,
    /// `W` in [`Backend::weight_layout`]); `act` is not softmax. `path`
    /// chooses how zero pixels are treated (backends without a sparse path
    /// ignore it); results are bit-identical either way.
    fn input_forward(
        &self,
        h: &mut [T],
        x: Rows<'_, u8>,
        w: Weights<'_, T>,
        act: Activation,
        path: Layer1Path,
        d: Dims,
    );

    /// `dW (K,N) := X^T dZ`, `db (N) := column sums of dZ`, `X = x[rows] / 255`
    /// (`dW` in [`Backend::weight_layout`], padding written as zero); with
    /// `update`, the optimizer's step on `W` with `dW` as well.
    fn input_backward(
        &self,
        g: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        x: Rows<'_, u8>,
        dz: &[T],
        path: Layer1Path,
        d: Dims,
    );

    /// Runs `work` (the backward pass above the input layer) on this
    /// thread while, where the backend gains by it, another thread of the
    /// pool lists the non-zero pixels of the batch `x[rows]` (`k` pixels an
    /// image) for [`Backend::input_backward_listed`]. The result borrows the
    /// batch, so its pixels cannot change before the lists are used. This
    /// default lists nothing and only runs `work`.
    fn overlap_input_lists<'x>(
        &self,
        x: Rows<'x, u8>,
        k: usize,
        path: Layer1Path,
        work: &mut dyn FnMut(),
    ) -> InputLists<'x> {
        let _ = path;
        work();
        InputLists { x, k, csc: None }
    }

    /// [`Backend::input_backward`] of the batch that `lists` borrows, with
    /// the lists [`Backend::overlap_input_lists`] made of it, if any (the
    /// same results, bit for bit).
    fn input_backward_listed(
        &self,
        g: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        lists: InputLists<'_>,
        dz: &[T],
        path: Layer1Path,
        d: Dims,
    ) {
        self.input_backward(g, update, lists.x, dz, path, d);
    }

    /// `H (B,N) := act(A W + b)` (`A` is `(B,K)`, `W` in
    /// [`Backend::weight_layout`]); `act` is not softmax. `path` chooses
    /// how the zeros of `A` are treated (as the input layer's zero pixels;
    /// backends without a sparse path ignore it); results are
    /// bit-identical either way.
    fn hidden_forward(&self, h: &mut [T], a: &[T], w: Weights<'_, T>, act: Activation, path: Layer1Path, d: Dims);

    /// `dW (K,N) := A^T dZ` (in [`Backend::weight_layout`]), `db (N) :=
    /// column sums of dZ`; with `update`, the optimizer's step on `W` with
    /// `dW` as well. `path`: the zeros of `A`, as in
    /// [`Backend::hidden_forward`].
    fn hidden_backward(
        &self,
        g: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        a: &[T],
        dz: &[T],
        path: Layer1Path,
        d: Dims,
    );

    /// `dA (B,K) := (dZ W^T) * act'(A)` (`dZ` is `(B,N)`, `W` in
    /// [`Backend::weight_layout`], `A` the activation output `act` made:
    /// `below`). `path`: the zeros of `dZ`, as in
    /// [`Backend::hidden_forward`].
    fn hidden_backward_input(
        &self,
        da: &mut [T],
        dz: &[T],
        w: &[T],
        below: Derivative<'_, T>,
        path: Layer1Path,
        d: Dims,
    );

    /// A hidden layer's two backward products at once:
    /// [`Backend::hidden_backward_input`] of `input` (whose kernel is a
    /// copy taken before the update, as `update` changes `W` meanwhile)
    /// and [`Backend::hidden_backward`] of `a` and `input.dz` with
    /// `update`. On a pool of two ([`runs_side_by_side`]) each runs alone
    /// on its thread ([`side_by_side`]), and a backend may let the thread
    /// that ends first take over the rest of the input gradient; elsewhere
    /// one after the other. The same bits as the two calls in turn, each
    /// on the threads it is given (one each when side by side; only BLAS's
    /// products depend on that number).
    ///
    /// ```
    /// use kiln_kernels::{scalar::Scalar, Activation, Backend, Derivative, Dims, Grads, InputGrad, Layer1Path};
    /// let d = Dims { k: 2, n: 1 }; // two inputs, one unit; a batch of one
    /// let (a, dz, w) = ([1.0f32, 0.0], [0.5f32], [2.0f32, 3.0]);
    /// let (mut da, mut dw, mut db) = ([0f32; 2], [0f32; 2], [0f32; 1]);
    /// let input = InputGrad::new(&mut da, &dz, &w, Derivative::new(Activation::Relu, &a));
    /// Scalar.hidden_backward_both(input, Grads::new(&mut dw, &mut db), None, &a, Layer1Path::Auto, d);
    /// assert_eq!(da, [1.0, 0.0]); // dZ W^T = [1.0, 1.5], through ReLU' at A
    /// assert_eq!((dw, db), ([0.5, 0.0], [0.5])); // A^T dZ, and dZ's sum
    /// ```
    fn hidden_backward_both(
        &self,
        input: InputGrad<'_, T>,
        g: Grads<'_, T>,
        update: Option<Update<'_, T>>,
        a: &[T],
        path: Layer1Path,
        d: Dims,
    ) {
        let InputGrad { da, dz, w, below } = input;
        side_by_side(
            || self.hidden_backward_input(da, dz, w, below, path, d),
            || self.hidden_backward(g, update, a, dz, path, d),
        );
    }

    /// `P (B,N) := softmax(A W + b)`, `dZ (B,N) := (P - onehot(y)) / B` where
    /// `y_i = labels.data[labels.rows[i]]` (`W` row-major); returns the
    /// summed clipped cross-entropy and the number of correct predictions.
    fn output_softmax_xent(
        &self,
        p: &mut [T],
        dz: &mut [T],
        a: &[T],
        w: Weights<'_, T>,
        labels: Rows<'_, u8>,
        d: Dims,
    ) -> XentStats<T>;

    /// `P (B,N) := softmax(A W + b)` (`W` row-major, `B = P.len() / N`;
    /// nothing when `N = 0`): the output layer of inference, without labels
    /// or loss; the same bits as [`Backend::output_softmax_xent`]'s `P`.
    fn output_softmax(&self, p: &mut [T], a: &[T], w: Weights<'_, T>, d: Dims);

    /// `dW (K,N) := A^T dZ`, `db (N) := column sums of dZ` (`A` is `(B,K)`,
    /// `dW` row-major).
    fn output_backward(&self, g: Grads<'_, T>, a: &[T], dz: &[T], d: Dims);

    /// `dA (B,K) := (dZ W^T) * act'(A)` (`dZ` is `(B,N)`, `W` row-major,
    /// `A` the activation output `act` made: `below`).
    fn output_backward_input(&self, da: &mut [T], dz: &[T], w: &[T], below: Derivative<'_, T>, d: Dims);

    /// One optimizer step of `u`'s weights with the gradient `g` (flat,
    /// as long as the weights).
    fn update(&self, u: Update<'_, T>, g: &[T]);
}
