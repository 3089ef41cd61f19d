//! A Keras-style `Sequential` stack of Dense layers over u8 images, trained
//! with categorical cross-entropy and any of Keras 3's optimizers (RMSprop,
//! SGD, Adam, AdamW) exactly as Keras 3 runs them.
//!
//! Dimensions, named once: `B` batch rows, `D` inputs (pixels per image),
//! `U_l` the units of layer `l`, `C` classes (the output layer's units).
//! Layer 0 (the input layer) reads the mapped u8 pixels; layers 1 .. L-1
//! (hidden) read the f32 activations below them; layer L (the output layer)
//! is fused with softmax cross-entropy. A one-layer network is its own
//! output layer (its input is then gathered to f32 first).
//!
//! [`Params`] is the model as a user sees it: every kernel `(in, out)`
//! row-major, then its bias, layer after layer. Inside a [`Model`] the
//! parameters, gradients and RMSprop velocities each live in one arena laid
//! out `[W_0 .. W_{L-1} (backend layout) | W_L | b_0 .. b_L]`: the kernels
//! whose update is fused into their gradient product first, in the
//! backend's panel layout, then everything updated by one flat pass. The
//! model is generic over the element type: `f32` trains, `f64` runs the
//! gradient checks through the same code and the scalar kernels' formulas.
//!
//! Where things are: `arch` (the layers: [`Dense`], [`Arch`],
//! [`Sequential`]), `params` ([`Params`], row-major), `arena` (how a
//! backend lays the parameters out, and the forward pass below the output
//! layer, which training and inference share), `net` ([`Model`]: training,
//! with gradients and optimizer state) and `predictor` ([`Predictor`]:
//! inference only).

mod arch;
mod arena;
mod net;
mod params;
mod predictor;

pub use arch::{Arch, Dense, Sequential};
pub use kiln_kernels::Activation;
pub use net::{Batch, Model, PhaseTimes};
pub use params::Params;
pub use predictor::{predict, Predictor};
