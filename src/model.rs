//! The tutorial network, Dense(784 -> H, ReLU) -> Dense(H -> 10, softmax),
//! trained with categorical cross-entropy and RMSprop exactly as Keras 3 does.
//!
//! Dimensions, named once: `B` batch rows, `D = 784` inputs, `H` hidden
//! units, `C = 10` classes. Parameters, gradients and RMSprop velocities each
//! live in one arena laid out `[W1 (D,H) | b1 (H) | W2 (H,C) | b2 (C)]`, so the
//! update is one flat pass over all of them. `W1` is stored in the backend's
//! panel layout (`kiln_kernels::PanelLayout`); every other tensor, and every
//! tensor outside a [`Model`], is row-major. The model is generic over the
//! element type: `f32` trains, `f64` runs the gradient checks through the
//! same code and the scalar kernels' formulas.

use crate::data::{CLASSES, PIXELS};
use crate::rng::{Rng, Stream};
use kiln_kernels::{AlignedVec, Backend, Dims, PanelLayout, Real, RmsProp, XentStats};
use std::time::{Duration, Instant};

/// The parameter tensors in arena order: name (as saved), shape for hidden
/// width `h`.
pub fn tensor_shapes(h: usize) -> [(&'static str, Vec<usize>); 4] {
    [
        ("dense_1.kernel", vec![PIXELS, h]),
        ("dense_1.bias", vec![h]),
        ("dense_2.kernel", vec![h, CLASSES]),
        ("dense_2.bias", vec![CLASSES]),
    ]
}

/// The four parameter tensors of the network, borrowed from an arena.
#[derive(Debug)]
pub struct Tensors<S> {
    /// Layer 1 kernel `(D, H)`.
    pub w1: S,
    /// Layer 1 bias `(H)`.
    pub b1: S,
    /// Layer 2 kernel `(H, C)`.
    pub w2: S,
    /// Layer 2 bias `(C)`.
    pub b2: S,
}

/// One arena of `[W1 | b1 | W2 | b2]` for hidden width `hidden`.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T: Real> {
    /// Hidden width `H`.
    pub hidden: usize,
    /// How `W1` is stored (row-major unless inside a [`Model`]).
    pub layout: PanelLayout,
    /// All values, in arena order.
    pub data: AlignedVec<T>,
}

impl<T: Real> Params<T> {
    /// All zeros, row-major.
    pub fn zeros(hidden: usize) -> Self {
        Self::zeros_in(PanelLayout::row_major(PIXELS, hidden))
    }

    /// All zeros, `W1` stored in `layout`.
    pub fn zeros_in(layout: PanelLayout) -> Self {
        let h = layout.n;
        assert_eq!(layout.k, PIXELS, "W1 has {PIXELS} rows");
        Params { hidden: h, layout, data: AlignedVec::zeroed(layout.len() + h + h * CLASSES + CLASSES) }
    }

    /// The same parameters with `W1` stored in `layout` instead.
    pub fn to_layout(&self, layout: PanelLayout) -> Self {
        if layout == self.layout {
            return self.clone();
        }
        assert_eq!((layout.k, layout.n), (self.layout.k, self.layout.n), "layouts of different shapes");
        let mut row_major = vec![T::zero(); PIXELS * self.hidden];
        self.layout.unpack(self.tensors().w1, &mut row_major);
        let mut out = Self::zeros_in(layout);
        let (src, dst) = (self.tensors(), out.tensors_mut());
        layout.pack(&row_major, dst.w1);
        dst.b1.copy_from_slice(src.b1);
        dst.w2.copy_from_slice(src.w2);
        dst.b2.copy_from_slice(src.b2);
        out
    }

    /// The same parameters, row-major.
    pub fn to_row_major(&self) -> Self {
        self.to_layout(PanelLayout::row_major(PIXELS, self.hidden))
    }

    /// Keras's defaults: Glorot-uniform kernels, uniform in
    /// `+-sqrt(6 / (fan_in + fan_out))`, and zero biases, drawn from `seed`.
    pub fn glorot(hidden: usize, seed: u64) -> Self {
        let mut p = Self::zeros(hidden);
        let t = p.tensors_mut();
        glorot_fill(t.w1, PIXELS, hidden, &mut Rng::new(seed, Stream::InitW1));
        glorot_fill(t.w2, hidden, CLASSES, &mut Rng::new(seed, Stream::InitW2));
        p
    }

    fn split_points(&self) -> [usize; 3] {
        let h = self.hidden;
        let a = self.layout.len();
        [a, a + h, a + h + h * CLASSES]
    }

    /// The four tensors, borrowed.
    pub fn tensors(&self) -> Tensors<&[T]> {
        let [a, b, c] = self.split_points();
        let (w1, rest) = self.data.split_at(a);
        let (b1, rest) = rest.split_at(b - a);
        let (w2, b2) = rest.split_at(c - b);
        Tensors { w1, b1, w2, b2 }
    }

    /// The four tensors, borrowed mutably.
    pub fn tensors_mut(&mut self) -> Tensors<&mut [T]> {
        let [a, b, c] = self.split_points();
        let (w1, rest) = self.data.split_at_mut(a);
        let (b1, rest) = rest.split_at_mut(b - a);
        let (w2, b2) = rest.split_at_mut(c - b);
        Tensors { w1, b1, w2, b2 }
    }

    /// The same values in another element type (rounded to nearest).
    pub fn cast<U: Real>(&self) -> Params<U> {
        Params {
            hidden: self.hidden,
            layout: self.layout,
            data: self.data.iter().map(|&v| U::from_f64(v.to_f64())).collect(),
        }
    }
}

fn glorot_fill<T: Real>(w: &mut [T], fan_in: usize, fan_out: usize, rng: &mut Rng) {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    for v in w {
        *v = T::from_f64((2.0 * rng.next_f64() - 1.0) * limit);
    }
}

/// Activations and their gradients for one batch of at most `capacity` rows.
#[derive(Debug)]
struct Workspace<T: Real> {
    h: AlignedVec<T>,  // (B, H) hidden activations after ReLU
    p: AlignedVec<T>,  // (B, C) softmax probabilities
    dz: AlignedVec<T>, // (B, C) gradient of the mean loss w.r.t. the logits
    dh: AlignedVec<T>, // (B, H) gradient w.r.t. the hidden pre-activations
}

impl<T: Real> Workspace<T> {
    fn new(capacity: usize, hidden: usize) -> Self {
        Workspace {
            h: AlignedVec::zeroed(capacity * hidden),
            p: AlignedVec::zeroed(capacity * CLASSES),
            dz: AlignedVec::zeroed(capacity * CLASSES),
            dh: AlignedVec::zeroed(capacity * hidden),
        }
    }
}

/// Wall time spent in each phase of the steps so far (for the epoch
/// breakdown; the timers cost a few tens of nanoseconds per step).
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseTimes {
    /// Layer 1: gather + convert + `relu(X W1 + b1)`.
    pub layer1_forward: Duration,
    /// Layer 2 with softmax cross-entropy, loss and `dZ`.
    pub layer2_forward: Duration,
    /// `dW2`, `db2` and `dH`.
    pub layer2_backward: Duration,
    /// `dW1`, `db1`, with `W1`'s update when fused.
    pub layer1_backward: Duration,
    /// RMSprop on whatever was not updated inside a product.
    pub update: Duration,
}

impl PhaseTimes {
    /// The phases as (name, seconds).
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("layer1_forward", self.layer1_forward.as_secs_f64()),
            ("layer2_forward", self.layer2_forward.as_secs_f64()),
            ("layer2_backward", self.layer2_backward.as_secs_f64()),
            ("layer1_backward", self.layer1_backward.as_secs_f64()),
            ("update", self.update.as_secs_f64()),
        ]
    }
}

/// Adds the time since `*t` to `acc` and restarts `*t`.
fn lap(t: &mut Instant, acc: &mut Duration) {
    let now = Instant::now();
    *acc += now - *t;
    *t = now;
}

/// The network with its gradients, optimizer state and activations, bound
/// to the kernel backend that runs it.
pub struct Model<'b, T: Real> {
    be: &'b dyn Backend<T>,
    /// The weights (`W1` in the backend's layout).
    pub params: Params<T>,
    /// Gradients of the mean batch loss, written by [`Model::forward_backward`].
    pub grads: Params<T>,
    /// RMSprop's running mean of squared gradients (starts at zero).
    pub velocity: Params<T>,
    /// Optimizer hyper-parameters.
    pub opt: RmsProp,
    /// Time spent per phase so far.
    pub times: PhaseTimes,
    ws: Workspace<T>,
}

/// A batch: row indices into a whole dataset of `u8` images and labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// All pixels of the dataset, `(R, D)`.
    pub pixels: &'a [u8],
    /// All labels of the dataset, `(R)`.
    pub labels: &'a [u8],
    /// The rows of this batch, `(B)`.
    pub rows: &'a [u32],
}

impl<'b, T: Real> Model<'b, T> {
    /// A model running on `be`, starting from `params` (any layout), for
    /// batches of at most `batch_capacity` rows.
    pub fn new(be: &'b dyn Backend<T>, params: &Params<T>, opt: RmsProp, batch_capacity: usize) -> Self {
        let hidden = params.hidden;
        let layout = be.w1_layout(PIXELS, hidden);
        Model {
            be,
            grads: Params::zeros_in(layout),
            velocity: Params::zeros_in(layout),
            ws: Workspace::new(batch_capacity, hidden),
            params: params.to_layout(layout),
            opt,
            times: PhaseTimes::default(),
        }
    }

    /// The backend this model runs on.
    pub fn backend(&self) -> &'b dyn Backend<T> {
        self.be
    }

    /// The largest batch this model's workspace holds.
    pub fn batch_capacity(&self) -> usize {
        self.ws.p.len() / CLASSES
    }

    fn dims(&self) -> (Dims, Dims) {
        let h = self.params.hidden;
        (Dims { k: PIXELS, n: h }, Dims { k: h, n: CLASSES })
    }

    /// Forward pass only: probabilities of `batch` into the workspace, and
    /// the summed loss and correct count.
    pub fn forward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        let (d1, d2) = self.dims();
        let b = batch.rows.len();
        assert!(b <= self.batch_capacity(), "batch of {b} rows exceeds the capacity {}", self.batch_capacity());
        let (be, w, ws, times) = (self.be, self.params.tensors(), &mut self.ws, &mut self.times);
        let mut t = Instant::now();
        let h = &mut ws.h[..b * d1.n]; // (B, H)
        be.dense_relu_forward_u8(h, batch.pixels, batch.rows, w.w1, w.b1, d1);
        lap(&mut t, &mut times.layer1_forward);
        let (p, dz) = (&mut ws.p[..b * CLASSES], &mut ws.dz[..b * CLASSES]); // (B, C) each
        let stats = be.dense_softmax_xent(p, dz, h, w.w2, w.b2, batch.labels, batch.rows, d2);
        lap(&mut t, &mut times.layer2_forward);
        stats
    }

    /// Probabilities of the last [`Model::forward`], `(B, C)`.
    pub fn probs(&self, b: usize) -> &[T] {
        &self.ws.p[..b * CLASSES]
    }

    /// Forward and backward: fills [`Model::grads`] with the gradient of the
    /// mean clipped cross-entropy of `batch`; returns the forward's stats.
    pub fn forward_backward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        let stats = self.forward(batch);
        self.backward(batch, false);
        stats
    }

    /// The backward pass of the last [`Model::forward`] on `batch`. With
    /// `update`, it also applies RMSprop: layer 1's kernel is updated inside
    /// its gradient product (the backend may fuse the two, so `W1`'s
    /// gradient is not kept), then everything else in one flat pass.
    fn backward(&mut self, batch: Batch<'_>, update: bool) {
        let (d1, d2) = self.dims();
        let b = batch.rows.len();
        let (be, opt, ws, times) = (self.be, self.opt, &mut self.ws, &mut self.times);
        let mut t = Instant::now();
        let (h, dz, dh) = (&ws.h[..b * d1.n], &ws.dz[..b * CLASSES], &mut ws.dh[..b * d1.n]);
        let g = self.grads.tensors_mut();
        let w = self.params.tensors_mut();
        be.dense_backward(g.w2, g.b2, h, dz, d2); // dW2 = H^T dZ, db2 = sum dZ
        be.relu_backward_input(dh, dz, w.w2, h, d2); // dH = (dZ W2^T) * [H > 0]
        lap(&mut t, &mut times.layer2_backward);
        if !update {
            be.dense_backward_u8(g.w1, g.b1, batch.pixels, batch.rows, dh, d1); // dW1 = X^T dH
            lap(&mut t, &mut times.layer1_backward);
            return;
        }
        let v = self.velocity.tensors_mut();
        // dW1 = X^T dH, and W1 updated from it at once.
        be.dense_backward_u8_rmsprop(w.w1, v.w1, g.w1, g.b1, batch.pixels, batch.rows, dh, d1, opt);
        lap(&mut t, &mut times.layer1_backward);
        // The rest of the arena, [b1 | W2 | b2], in one pass.
        let w1_len = self.params.layout.len();
        be.rmsprop(&mut self.params.data[w1_len..], &self.grads.data[w1_len..], &mut self.velocity.data[w1_len..], opt);
        lap(&mut t, &mut times.update);
    }

    /// One RMSprop update of every parameter from [`Model::grads`] (after
    /// [`Model::forward_backward`]).
    pub fn update(&mut self) {
        let mut t = Instant::now();
        self.be.rmsprop(&mut self.params.data, &self.grads.data, &mut self.velocity.data, self.opt);
        lap(&mut t, &mut self.times.update);
    }

    /// The deliberate slowdown of the `gate-selftest` feature: layer 1's
    /// forward again on the first 60% of the rows (same inputs, so the same
    /// values are written again and results do not change).
    #[cfg(feature = "gate-selftest")]
    fn gate_selftest_slowdown(&mut self, batch: Batch<'_>) {
        let (d1, _) = self.dims();
        let part = &batch.rows[..batch.rows.len() * 3 / 5];
        let w = self.params.tensors();
        self.be.dense_relu_forward_u8(&mut self.ws.h[..part.len() * d1.n], batch.pixels, part, w.w1, w.b1, d1);
    }

    /// A whole training step on `batch`: forward, backward, update (the
    /// same weights, bit for bit, as `forward_backward` then `update`). When
    /// the loss is not finite nothing is updated and `Err` carries the stats.
    pub fn train_step(&mut self, batch: Batch<'_>) -> Result<XentStats<T>, XentStats<T>> {
        let stats = self.forward(batch);
        if !stats.loss_sum.is_finite() {
            return Err(stats);
        }
        #[cfg(feature = "gate-selftest")]
        self.gate_selftest_slowdown(batch);
        self.backward(batch, true);
        Ok(stats)
    }
}

/// Softmax probabilities `(N, 10)` of `pixels` (`N` images of 784 u8
/// pixels, row-major), computed with `params` on `be`.
pub fn predict(be: &dyn Backend<f32>, params: &Params<f32>, pixels: &[u8]) -> Vec<[f32; CLASSES]> {
    let n = pixels.len() / PIXELS;
    let capacity = n.clamp(1, 1024);
    let mut model = Model::new(be, params, RmsProp::default(), capacity);
    let labels = vec![0u8; n];
    let rows: Vec<u32> = (0..n as u32).collect();
    let mut out = Vec::with_capacity(n);
    for chunk in rows.chunks(capacity) {
        model.forward(Batch { pixels, labels: &labels, rows: chunk });
        out.extend(model.probs(chunk.len()).chunks_exact(CLASSES).map(|p| {
            let mut a = [0f32; CLASSES];
            a.copy_from_slice(p);
            a
        }));
    }
    out
}
