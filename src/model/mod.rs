//! A Keras-style `Sequential` stack of layers over u8 images or f32
//! features ([`Inputs`]), trained with
//! categorical cross-entropy and any of Keras 3's optimizers (RMSprop, SGD,
//! Adam, AdamW) exactly as Keras 3 runs them.
//!
//! The layer kinds are [`Dense`] and [`Dropout`] ([`Layer`]). The Dense
//! layers carry the parameters and the work; a Dropout acts on the output
//! of the Dense layer below it, in training only: its mask is applied to
//! that layer's output right after the layer's kernel (forward), and
//! together with the layer's activation derivative (backward); the zeros
//! it makes are zeros the next layer's sparse kernels skip.
//!
//! Dimensions, named once: `B` batch rows, `D` inputs (pixels per image),
//! `U_l` the units of Dense layer `l`, `C` classes (the output layer's
//! units). Dense layer 0 (the input layer) reads the mapped u8 pixels (or
//! gathered f32 features, as a hidden layer reads activations);
//! layers 1 .. L-1 (hidden) read the f32 activations below them; layer L
//! (the output layer) is fused with softmax cross-entropy. A one-layer
//! network is its own output layer (its input is then gathered to f32
//! first).
//!
//! [`Params`] is the model as a user sees it: every kernel `(in, out)`
//! row-major, then its bias, Dense layer after Dense layer. Inside a
//! [`Model`] the parameters, gradients and optimizer state each live in one
//! arena laid out `[W_0 .. W_{L-1} (backend layout) | W_L | b_0 .. b_L]`:
//! the kernels whose update is fused into their gradient product first, in
//! the backend's panel layout, then everything updated by one flat pass.
//! The model is generic over the element type: `f32` trains, `f64` runs the
//! gradient checks through the same code and the scalar kernels' formulas.
//!
//! Where things are: `arch` (the layer kinds, [`Arch`], [`Sequential`]),
//! `params` ([`Params`], row-major), `arena` (how a backend lays the
//! parameters out, and the forward pass below the output layer, which
//! training and inference share), `dropout` (Dropout's masks, forward and
//! backward), `net` ([`Model`]: training, with gradients and optimizer
//! state; what each layer's backward computes), `pairing` (how the
//! backward's layers share the pool's threads), `shift` (f32 features
//! shifted per column in training, so that layer 1 skips what most rows
//! share) and `predictor` ([`Predictor`]: inference only).

mod arch;
mod arena;
mod dropout;
mod inputs;
mod net;
mod pairing;
mod params;
mod predictor;
mod shift;

pub use arch::{Arch, Dense, Dropout, Layer, Sequential};
#[doc(hidden)]
pub use dropout::keep_mask as dropout_keep_mask;
pub use inputs::{exact_pixels, Inputs};
pub use kiln_kernels::Activation;
pub use net::{Batch, Model, PhaseTimes};
pub use params::Params;
pub use predictor::{predict, probabilities, Predictor};
