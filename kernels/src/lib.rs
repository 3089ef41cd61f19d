//! Compute kernels for kiln's two-layer perceptron. This crate knows nothing of
//! MNIST or of files: it sees row-major matrices, row indices and labels.
//!
//! # Conventions (once, for every op)
//!
//! * Every matrix is **row-major** and densely packed: an `(M, N)` matrix `A`
//!   is a slice of `M * N` elements and `A[i, j]` is `a[i * N + j]`.
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
//!
//! # The ops of one training step
//!
//! | op | operation | shapes |
//! |---|---|---|
//! | [`Backend::dense_relu_forward_u8`] | `H := relu(X W + b)`, `X = x[rows] / 255` | `H (B,N)`, `x (R,K)`, `W (K,N)`, `b (N)` |
//! | [`Backend::dense_softmax_xent`] | `P := softmax(H W + b)`; `loss = sum_i -ln clip(P[i, y_i])`; `dZ := (P - onehot(y)) / B` | `H (B,K)`, `W (K,N)`, `P, dZ (B,N)` |
//! | [`Backend::dense_backward`] | `dW := H^T dZ`; `db := sum_i dZ[i, :]` | `H (B,K)`, `dZ (B,N)`, `dW (K,N)` |
//! | [`Backend::dense_backward_u8`] | `dW := X^T dZ`; `db := sum_i dZ[i, :]`, `X = x[rows] / 255` | `x (R,K)`, `dZ (B,N)`, `dW (K,N)` |
//! | [`Backend::relu_backward_input`] | `dH := (dZ W^T) * [H > 0]` | `dZ (B,N)`, `W (K,N)`, `H, dH (B,K)` |
//! | [`Backend::rmsprop`] | `v := rho v + (1 - rho) g^2`; `w := w - lr g / sqrt(v + eps)` | flat, elementwise |
//! | [`Backend::dense_backward_u8_rmsprop`] | `dense_backward_u8`, then `rmsprop` on `(W, dW, v)`, bit-identical; may be fused | as above |
//!
//! The BLAS backend is the exception to `beta = 0` internally (it broadcasts
//! the bias into `C` and calls `sgemm` with `beta = 1`), never in what it
//! reads: its outputs are still fully written before being read.
//!
//! `clip` bounds a probability to `[1e-7, 1 - 1e-7]` as Keras does; the
//! gradient `dZ` is taken from the unclipped probabilities.
//!
//! # Layer 1's weights live in the backend's layout
//!
//! Layer 1's kernel `W (K,N)` is read by every step and written by every
//! update; repacking it for each product would cost a pass over memory each
//! time. So the two u8 ops read `W` and write `dW` in the backend's
//! [`PanelLayout`] ([`Backend::w1_layout`]): panels of `nr` columns, each a
//! row-major `(K, nr)` block, zero-padded past column `N`. The model keeps
//! `W1`, `dW1` and its RMSprop velocity in that layout (the update is
//! elementwise and does not care) and converts only when saving, loading or
//! comparing. With `nr >= N` the layout is plain row-major; the scalar
//! backend uses that.
//!
//! # Zero pixels
//!
//! The SIMD backends can run layer 1's two products sparse, skipping zero
//! pixels ([`Layer1Path`], `sparse.rs`); the results are bit-identical to
//! the dense path, so this is purely a choice of speed.
//!
//! Every backend implements [`Backend`]; the model code only ever talks to a
//! `&dyn Backend<T>`, so a new backend slots in without touching it.
//! [`scalar`] is the plain reference every other backend is tested against;
//! it is generic over [`Real`] so that the gradient checks run the very same
//! formulas in `f64`.

mod aligned;
#[cfg(feature = "blas")]
mod blas;
mod gemm;
mod isa;
mod params;
mod peak;
mod prefetch;
pub mod scalar;
mod simd;
mod small;
mod sparse;

pub use aligned::AlignedVec;
pub use prefetch::prefetch_rows;
use std::fmt::Debug;

/// The element type of the kernels: `f32` for training, `f64` for the
/// reference path of the gradient checks.
pub trait Real: num_traits::Float + bytemuck::Pod + Default + Debug + Send + Sync + 'static {
    /// `v` converted exactly (every `u8` is representable).
    fn from_u8(v: u8) -> Self;
    /// `v` rounded to the nearest representable value.
    fn from_f64(v: f64) -> Self;
    /// `self` widened (exactly for `f32` and `f64`).
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn from_u8(v: u8) -> Self {
        f32::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    fn from_u8(v: u8) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Probabilities are clipped to `[CLIP, 1 - CLIP]` before the logarithm of the
/// cross-entropy, as Keras does (`keras.backend.epsilon()`).
pub const CLIP: f64 = 1e-7;

/// What [`Backend::dense_softmax_xent`] reports about a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentStats<T> {
    /// `sum_i -ln clip(P[i, y_i])` over the batch (not yet divided by `B`).
    pub loss_sum: T,
    /// How many rows have `argmax_j P[i, j] == y_i` (first maximum wins).
    pub correct: usize,
}

/// Shapes shared by the dense ops: the reduction length `k` and the output
/// width `n`. The batch size `B` is implied by the slices (`rows.len()`, or
/// the length of the output divided by `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Inner (reduction) dimension `K`.
    pub k: usize,
    /// Output columns `N`.
    pub n: usize,
}

/// How a `(K, N)` matrix is stored in panels of `nr` columns: panel `p`
/// holds columns `p*nr .. (p+1)*nr` as a row-major `(K, nr)` block, and the
/// columns past `N` in the last panel are zero. `nr == N` is row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanelLayout {
    /// Rows `K`.
    pub k: usize,
    /// Columns `N` (without padding).
    pub n: usize,
    /// Panel width (at least 1).
    pub nr: usize,
}

impl PanelLayout {
    /// Plain row-major `(K, N)`.
    pub fn row_major(k: usize, n: usize) -> Self {
        PanelLayout { k, n, nr: n.max(1) }
    }
    /// Panels of `nr` columns.
    pub fn panels_of(k: usize, n: usize, nr: usize) -> Self {
        assert!(nr > 0, "panel width 0");
        PanelLayout { k, n, nr }
    }
    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
    /// Stored elements, padding included.
    pub fn len(&self) -> usize {
        self.panels() * self.k * self.nr
    }
    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Position of element `(row, col)`.
    pub fn index(&self, row: usize, col: usize) -> usize {
        (col / self.nr) * self.k * self.nr + row * self.nr + col % self.nr
    }
    /// Copies row-major `src (K, N)` into this layout (padding set to zero).
    pub fn pack<T: Real>(&self, src: &[T], dst: &mut [T]) {
        assert_eq!(src.len(), self.k * self.n, "source is not (K, N)");
        assert_eq!(dst.len(), self.len(), "destination does not fit the layout");
        dst.fill(T::zero());
        for (row, r) in src.chunks_exact(self.n.max(1)).enumerate().take(self.k) {
            for (col, &v) in r.iter().enumerate() {
                dst[self.index(row, col)] = v;
            }
        }
    }
    /// Copies this layout back into row-major `dst (K, N)`.
    pub fn unpack<T: Real>(&self, src: &[T], dst: &mut [T]) {
        assert_eq!(src.len(), self.len(), "source does not fit the layout");
        assert_eq!(dst.len(), self.k * self.n, "destination is not (K, N)");
        for (row, r) in dst.chunks_exact_mut(self.n.max(1)).enumerate().take(self.k) {
            for (col, v) in r.iter_mut().enumerate() {
                *v = src[self.index(row, col)];
            }
        }
    }
}

/// How layer 1's two products treat zero pixels (SIMD backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer1Path {
    /// Sparse when the batch's density of non-zero pixels is low, else dense.
    Auto,
    /// Always the dense packed GEMM.
    Dense,
    /// Always skip zero pixels.
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

/// Hyper-parameters of the RMSprop update, in Keras's names. They are kept
/// in `f64`, as Keras keeps them in Python floats, and rounded to the element
/// type once per update ([`RmsProp::coefficients`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate (Keras default 1e-3).
    pub lr: f64,
    /// Decay of the squared-gradient average (Keras default 0.9).
    pub rho: f64,
    /// Added under the square root (Keras default 1e-7).
    pub eps: f64,
}

impl Default for RmsProp {
    fn default() -> Self {
        Self { lr: 1e-3, rho: 0.9, eps: 1e-7 }
    }
}

impl RmsProp {
    /// `(lr, rho, 1 - rho, eps)` rounded to `T`; `1 - rho` is formed in `f64`
    /// first, as Keras forms it in Python (in `f32`, `1 - 0.9f32` would be
    /// one unit in the last place away from `0.1f32`).
    pub fn coefficients<T: Real>(&self) -> (T, T, T, T) {
        (T::from_f64(self.lr), T::from_f64(self.rho), T::from_f64(1.0 - self.rho), T::from_f64(self.eps))
    }
}

/// One implementation of every op a training step needs (see the crate
/// documentation for the exact contract of each).
///
/// Every method checks the lengths of its slices against the shapes and
/// panics with a message on a mismatch: a mismatch is a bug in the caller,
/// never a property of user input. Work may be split over the current rayon
/// thread pool; results never depend on the number of threads.
pub trait Backend<T: Real>: Sync {
    /// The name shown to users (`scalar`, `avx2`, ...).
    fn name(&self) -> &'static str;

    /// Chooses how layer 1 treats zero pixels from now on; backends without
    /// a sparse path ignore it. Results are bit-identical either way.
    fn set_layer1_path(&self, path: Layer1Path) {
        let _ = path;
    }

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

    /// The layout of `W` and `dW` in the two u8 ops for a `(K, N)` kernel
    /// (see the crate docs); every other matrix is row-major.
    fn w1_layout(&self, k: usize, n: usize) -> PanelLayout {
        PanelLayout::row_major(k, n)
    }

    /// `H (B,N) := relu(X W + b)` with `X = x[rows] / 255` (`x` is `(R,K)`,
    /// `W` in [`Backend::w1_layout`]).
    fn dense_relu_forward_u8(&self, h: &mut [T], x: &[u8], rows: &[u32], w: &[T], b: &[T], d: Dims);

    /// `P (B,N) := softmax(H W + b)`, `dZ (B,N) := (P - onehot(y)) / B` where
    /// `y_i = labels[rows[i]]`; returns the summed clipped cross-entropy and
    /// the number of correct predictions.
    #[allow(clippy::too_many_arguments)]
    fn dense_softmax_xent(
        &self,
        p: &mut [T],
        dz: &mut [T],
        h: &[T],
        w: &[T],
        b: &[T],
        labels: &[u8],
        rows: &[u32],
        d: Dims,
    ) -> XentStats<T>;

    /// `dW (K,N) := H^T dZ`, `db (N) := column sums of dZ` (`H` is `(B,K)`).
    fn dense_backward(&self, dw: &mut [T], db: &mut [T], h: &[T], dz: &[T], d: Dims);

    /// `dW (K,N) := X^T dZ`, `db (N) := column sums of dZ`, `X = x[rows] / 255`
    /// (`dW` in [`Backend::w1_layout`], padding written as zero).
    #[allow(clippy::too_many_arguments)]
    fn dense_backward_u8(&self, dw: &mut [T], db: &mut [T], x: &[u8], rows: &[u32], dz: &[T], d: Dims);

    /// [`Backend::dense_backward_u8`] into `dW`, then [`Backend::rmsprop`] on
    /// `(W, dW, v)`: the same result bit for bit. Backends may fuse the two
    /// (updating each gradient tile while it is in registers, never storing
    /// it); `dW` then holds unspecified values afterwards. `W`, `dW` and `v`
    /// are in [`Backend::w1_layout`].
    #[allow(clippy::too_many_arguments)]
    fn dense_backward_u8_rmsprop(
        &self,
        w: &mut [T],
        v: &mut [T],
        dw: &mut [T],
        db: &mut [T],
        x: &[u8],
        rows: &[u32],
        dz: &[T],
        d: Dims,
        opt: RmsProp,
    ) {
        self.dense_backward_u8(dw, db, x, rows, dz, d);
        self.rmsprop(w, dw, v, opt);
    }

    /// `dH (B,K) := (dZ W^T) * [H > 0]` (`dZ` is `(B,N)`, `W` is `(K,N)`).
    fn relu_backward_input(&self, dh: &mut [T], dz: &[T], w: &[T], h: &[T], d: Dims);

    /// One RMSprop step over flat, equally long `w`, `g` and `v`.
    fn rmsprop(&self, w: &mut [T], g: &[T], v: &mut [T], opt: RmsProp);
}

/// Every backend name [`select`] knows, fastest first (the order `auto`
/// tries them in, BLAS excepted: it is never chosen automatically).
pub const BACKEND_NAMES: &[&str] = &["avx512", "avx2", "neon", "blas", "scalar"];

/// The backends this build and this CPU can run, fastest first.
pub fn available_backends() -> Vec<&'static str> {
    BACKEND_NAMES.iter().copied().filter(|name| select(name).is_ok()).collect()
}

/// The backend called `name`: `auto` picks the fastest SIMD backend this CPU
/// runs (else `scalar`); any other name must be one of [`BACKEND_NAMES`] and
/// runnable here, or the error says why. Never a silent fallback.
/// Detection runs once; the backends are built once and cached.
pub fn select(name: &str) -> Result<&'static dyn Backend<f32>, String> {
    use std::sync::OnceLock;
    static SCALAR: scalar::Scalar = scalar::Scalar;
    #[cfg(target_arch = "x86_64")]
    static AVX2: OnceLock<Option<isa::SimdBackend<simd::Avx2>>> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    static AVX512: OnceLock<Option<isa::SimdBackend<simd::Avx512>>> = OnceLock::new();
    #[cfg(target_arch = "aarch64")]
    static NEON: OnceLock<Option<isa::SimdBackend<simd::Neon>>> = OnceLock::new();
    fn missing(name: &str, why: &str) -> String {
        format!("backend `{name}` cannot run here: {why}")
    }
    match name {
        "scalar" => Ok(&SCALAR),
        "auto" => {
            for candidate in ["avx512", "avx2", "neon"] {
                if let Ok(b) = select(candidate) {
                    return Ok(b);
                }
            }
            Ok(&SCALAR)
        }
        #[cfg(target_arch = "x86_64")]
        "avx2" => match AVX2.get_or_init(isa::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks AVX2 or FMA")),
        },
        #[cfg(target_arch = "x86_64")]
        "avx512" => match AVX512.get_or_init(isa::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks AVX-512F")),
        },
        #[cfg(target_arch = "aarch64")]
        "neon" => match NEON.get_or_init(isa::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks NEON")),
        },
        #[cfg(not(target_arch = "x86_64"))]
        "avx2" | "avx512" => Err(missing(name, "it is an x86_64 instruction set")),
        #[cfg(not(target_arch = "aarch64"))]
        "neon" => Err(missing(name, "it is an aarch64 instruction set")),
        #[cfg(feature = "blas")]
        "blas" => Ok(blas::backend()),
        #[cfg(not(feature = "blas"))]
        "blas" => Err(missing(name, "this build lacks the `blas` cargo feature (build with --features blas)")),
        _ => Err(format!("unknown backend `{name}`; expected one of: auto, {}", BACKEND_NAMES.join(", "))),
    }
}
