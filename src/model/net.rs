//! [`Model`]: a network with its gradients, optimizer state and one
//! batch's activations, trained step by step as Keras does.

use super::arch::Elementwise;
use super::arena::{arena_slots, forward_hidden, pack_into, Mode, Slot};
use super::dropout::{self, StepKey};
use super::pairing::{self, Plan};
use super::shift::{self, Shift};
use super::{Arch, Inputs, Params};
use anyhow::{ensure, Result};
use kiln_kernels::{
    Activation, AlignedVec, Backend, Grads, InputGrad, InputLists, Layer1Path, Optimizer, Real, Rows, Schedule, Update,
    Weights, XentStats, MAX_SLOTS,
};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Activations and their gradients for one batch of at most `capacity` rows.
#[derive(Debug)]
struct Workspace<T: Real> {
    /// `(B, U_l)` outputs of layers 0 .. L-1.
    acts: Vec<AlignedVec<T>>,
    /// `(B, U_l)` gradients w.r.t. the pre-activations of layers 0 .. L-1.
    grads: Vec<AlignedVec<T>>,
    /// `(B, U_l)` the Dense layer's own output where Dropouts follow it
    /// (their masked copy is in `acts`), in training; empty elsewhere.
    pre: Vec<AlignedVec<T>>,
    /// `(drops, B, U_l)` the masks of the Dropouts after layer `l`.
    keep: Vec<Vec<u8>>,
    /// `(B, D)` the gathered input: of a one-layer network, and of f32
    /// features (grown when first needed).
    input: AlignedVec<T>,
    /// `(B, C)` softmax probabilities.
    p: AlignedVec<T>,
    /// `(B, C)` gradient of the mean loss w.r.t. the logits.
    dz: AlignedVec<T>,
    /// A copy of the hidden layers' kernels (on two threads their input
    /// gradients read it while their updates run: `Plan::snapshot`; empty
    /// until then).
    kernel_copy: AlignedVec<T>,
    capacity: usize,
}

impl<T: Real> Workspace<T> {
    fn new(arch: &Arch, capacity: usize) -> Self {
        let hidden = &arch.dense[..arch.dense.len() - 1];
        let buf = |w: usize| AlignedVec::zeroed(capacity * w);
        let dropping = |l: usize| !arch.after[l].is_empty();
        Workspace {
            acts: hidden.iter().map(|d| buf(d.units)).collect(),
            grads: hidden.iter().map(|d| buf(d.units)).collect(),
            pre: hidden.iter().enumerate().map(|(l, d)| buf(if dropping(l) { d.units } else { 0 })).collect(),
            keep: hidden
                .iter()
                .enumerate()
                .map(|(l, d)| vec![0; dropout::mask_len(&arch.after[l], capacity, d.units)])
                .collect(),
            input: if hidden.is_empty() { buf(arch.inputs) } else { AlignedVec::zeroed(0) },
            p: buf(arch.classes()),
            dz: buf(arch.classes()),
            kernel_copy: AlignedVec::zeroed(0),
            capacity,
        }
    }
}

/// Wall time spent in each layer's forward and backward so far (for the
/// epoch breakdown; the timers cost a few tens of nanoseconds per step).
#[derive(Clone, Debug, Default)]
pub struct PhaseTimes {
    /// Per layer: its forward (the output layer's includes softmax-xent).
    pub forward: Vec<Duration>,
    /// Per layer: its weight gradient (with the fused update where there is
    /// one) and the input gradient below it.
    pub backward: Vec<Duration>,
    /// The flat update of whatever was not updated inside a product.
    pub update: Duration,
}

impl PhaseTimes {
    /// The phases in the order a step runs them, as (name, seconds):
    /// `layer1_forward` .. `layerN_forward`, `layerN_backward` ..
    /// `layer1_backward`, `update`.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .forward
            .iter()
            .enumerate()
            .map(|(l, d)| (format!("layer{}_forward", l + 1), d.as_secs_f64()))
            .collect();
        for (l, d) in self.backward.iter().enumerate().rev() {
            v.push((format!("layer{}_backward", l + 1), d.as_secs_f64()));
        }
        v.push(("update".into(), self.update.as_secs_f64()));
        v
    }
}

/// Adds the time since `*t` to `acc` and restarts `*t`.
fn lap(t: &mut Instant, acc: &mut Duration) {
    let now = Instant::now();
    *acc += now - *t;
    *t = now;
}

/// A batch: row indices into a whole dataset's inputs and labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// All inputs of the dataset, `(R, D)`.
    pub inputs: Inputs<'a>,
    /// All labels of the dataset, `(R)`.
    pub labels: &'a [u8],
    /// The rows of this batch, `(B)`.
    pub rows: &'a [u32],
}

/// Borrows `r` of `v` mutably (one range of one arena at a time).
fn part<'a, T>(v: &'a mut [T], r: &Range<usize>) -> &'a mut [T] {
    &mut v[r.clone()]
}

/// The network with its gradients, optimizer state and activations, bound
/// to the kernel backend that runs it. The parameters live in the
/// backend's layout and are only reachable through row-major copies
/// ([`Model::params`]), so no caller can misread them.
pub struct Model<'b, T: Real> {
    be: &'b dyn Backend<T>,
    arch: Arch,
    opt: Optimizer,
    schedule: Schedule,
    /// Updates applied so far (Keras's `optimizer.iterations`).
    iterations: u64,
    /// Keys the Dropout masks (with the update number and the row).
    seed: u64,
    path: Layer1Path,
    slots: Vec<Slot>,
    /// Start of `[W_L | b_0 .. b_L]`, updated by one flat pass.
    tail: usize,
    params: AlignedVec<T>,
    grads: AlignedVec<T>,
    /// The optimizer's state arrays by slot (empty where unused).
    state: [AlignedVec<T>; MAX_SLOTS],
    times: PhaseTimes,
    ws: Workspace<T>,
    /// Layer 1's offsets for f32 features ([`Model::shift_features`]).
    shift: Option<Shift<T>>,
    /// Whether the last forward shifted its features (its backward then
    /// corrects layer 1's gradient).
    shifted: bool,
}

impl<'b, T: Real> Model<'b, T> {
    /// A model running on `be`, starting from `params`, updated by `opt`
    /// (its state at zero, no update done yet); an error naming the
    /// argument when one of `opt`'s hyper-parameters cannot train (a NaN or
    /// negative learning rate, a decay outside [0, 1), ...). Its
    /// activations grow to the largest batch it is given.
    ///
    /// ```
    /// use kiln::kernels::RmsProp;
    /// use kiln::model::{Activation, Model, Params, Sequential};
    /// let arch = Sequential::new(4).dense(2, Activation::Softmax).build().unwrap();
    /// let be = kiln::kernels::select("auto").unwrap();
    /// assert!(Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).is_ok());
    /// let nan = RmsProp { lr: f64::NAN, ..RmsProp::default() };
    /// let err = Model::new(be, &Params::glorot(&arch, 1), nan).err().unwrap();
    /// assert!(err.to_string().contains("learning_rate"), "{err}");
    /// ```
    pub fn new(be: &'b dyn Backend<T>, params: &Params<T>, opt: impl Into<Optimizer>) -> Result<Self> {
        let opt = opt.into();
        opt.check().map_err(|e| anyhow::anyhow!("{}: {e}", opt.name()))?;
        let arch = params.arch.clone();
        let last = arch.dense.len() - 1;
        let (slots, at) = arena_slots(be, &arch);
        let tail = slots[last].kernel.start;
        let mut model = Model {
            be,
            opt,
            schedule: Schedule::Constant,
            iterations: 0,
            seed: 0,
            path: Layer1Path::Auto,
            tail,
            params: AlignedVec::zeroed(at),
            grads: AlignedVec::zeroed(at),
            state: opt.slots().map(|used| AlignedVec::zeroed(if used.is_some() { at } else { 0 })),
            times: PhaseTimes {
                forward: vec![Duration::ZERO; last + 1],
                backward: vec![Duration::ZERO; last + 1],
                update: Duration::ZERO,
            },
            ws: Workspace::new(&arch, 0),
            shift: None,
            shifted: false,
            slots,
            arch,
        };
        model.set_params(params);
        Ok(model)
    }

    /// Grows the activations to hold a batch of `b` rows now (they would
    /// grow at the first such batch anyway; `fit` reserves its batch size
    /// so that [`Model::batch_capacity`], and with it `evaluate`'s chunks,
    /// depend on the settings, not on what ran before). Never shrinks; the
    /// kernels' copy, sized on use, is kept.
    pub fn reserve(&mut self, b: usize) {
        if b > self.ws.capacity {
            let copy = std::mem::replace(&mut self.ws.kernel_copy, AlignedVec::zeroed(0));
            self.ws = Workspace::new(&self.arch, b);
            self.ws.kernel_copy = copy;
        }
    }

    /// The same model, with the treatment of zero inputs chosen: the input
    /// layer's zero pixels, and the hidden layers' zero activations (and
    /// the zeros a ReLU leaves in their gradients). Results are
    /// bit-identical for every choice.
    pub fn with_layer1_path(mut self, path: Layer1Path) -> Self {
        self.path = path;
        self
    }

    /// The same model, its learning rate following `schedule` (Keras's
    /// `learning_rate=` a schedule) from the optimizer's learning rate.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The same model, its Dropout masks keyed by `seed` (0 until set;
    /// [`crate::train::fit`] sets it to its `Config::seed`). A mask depends
    /// on the seed, the Dropout, the update number ([`Model::iterations`])
    /// and the dataset row, and on nothing else.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The seed of the Dropout masks.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The architecture.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The backend this model runs on.
    pub fn backend(&self) -> &'b dyn Backend<T> {
        self.be
    }

    /// The optimizer and its hyper-parameters.
    pub fn optimizer(&self) -> Optimizer {
        self.opt
    }

    /// Updates applied so far (Keras's `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The path chosen by [`Model::with_layer1_path`].
    pub fn layer1_path(&self) -> Layer1Path {
        self.path
    }

    /// Time spent per phase so far.
    pub fn times(&self) -> &PhaseTimes {
        &self.times
    }

    /// The largest batch this model's activations hold now: the largest it
    /// has been given or reserved ([`Model::reserve`]; they grow as needed).
    pub fn batch_capacity(&self) -> usize {
        self.ws.capacity
    }

    /// Copies an arena into row-major [`Params`].
    fn export(&self, arena: &[T]) -> Params<T> {
        let mut p = Params::zeros(&self.arch);
        for (l, s) in self.slots.iter().enumerate() {
            s.layout.unpack(&arena[s.kernel.clone()], p.kernel_mut(l));
            p.bias_mut(l).copy_from_slice(&arena[s.bias.clone()]);
        }
        p
    }

    /// The weights, row-major.
    pub fn params(&self) -> Params<T> {
        self.export(&self.params)
    }

    /// The gradients of the last [`Model::forward_backward`], row-major.
    pub fn grads(&self) -> Params<T> {
        self.export(&self.grads)
    }

    /// The optimizer's state arrays, row-major, by Keras's names (e.g.
    /// RMSprop's `velocity`, Adam's `momentum` and `velocity`).
    pub fn optimizer_state(&self) -> Vec<(&'static str, Params<T>)> {
        let names = self.opt.slots();
        names.iter().zip(&self.state).filter_map(|(name, s)| name.map(|n| (n, self.export(s)))).collect()
    }

    /// Restores the optimizer's state (as [`Model::optimizer_state`] gives
    /// it) and its update count, e.g. to resume training exactly; an error
    /// when a state array is missing, unknown or of another architecture.
    pub fn set_optimizer_state(&mut self, iterations: u64, state: &[(String, Params<T>)]) -> Result<()> {
        let names = self.opt.slots();
        for (name, p) in state {
            ensure!(names.contains(&Some(name.as_str())), "{} keeps no state called `{name}`", self.opt.name());
            ensure!(p.arch == self.arch, "optimizer state `{name}` belongs to the layers {}", p.arch.spec());
        }
        for name in names.iter().flatten() {
            ensure!(state.iter().any(|(n, _)| n == name), "optimizer state `{name}` is missing");
        }
        for (slot, name) in names.iter().enumerate() {
            if let Some(p) = name.and_then(|n| state.iter().find(|(m, _)| m == n)).map(|(_, p)| p) {
                let arena = &mut self.state[slot];
                for (l, s) in self.slots.iter().enumerate() {
                    s.layout.pack(p.kernel(l), &mut arena[s.kernel.clone()]);
                    arena[s.bias.clone()].copy_from_slice(p.bias(l));
                }
            }
        }
        self.iterations = iterations;
        Ok(())
    }

    /// Replaces the weights (the optimizer state is kept). Panics when
    /// `params` belongs to another architecture.
    pub fn set_params(&mut self, params: &Params<T>) {
        assert_eq!(params.arch, self.arch, "parameters of another architecture");
        pack_into(&self.slots, params, &mut self.params);
    }

    /// Prepares layer 1 for the f32 features `inputs` (a dataset's, `(R,
    /// D)`): when most of each column is one value `c_j` (standardized
    /// pixels: every dark pixel of a column is the same number), layer 1
    /// runs on `x - c`, skipping what is then zero as it skips dark pixels,
    /// with its bias and weight gradient corrected to be those of `x` (up to
    /// the rounding of another order of additions). Otherwise, and for u8
    /// pixels or a network without hidden layers, nothing changes, bit for
    /// bit. Only training shifts: inference ([`Model::forward`]) reads the
    /// features as a [`super::Predictor`] does. Returns whether the features
    /// are shifted; `fit` calls it with its training data. The offsets stay
    /// until the next call: they give the same results, up to rounding, on
    /// any other data.
    ///
    /// ```
    /// use kiln::kernels::RmsProp;
    /// use kiln::model::{Activation, Inputs, Model, Params, Sequential};
    /// let arch = Sequential::new(2).dense(4, Activation::Relu).dense(2, Activation::Softmax).build().unwrap();
    /// let mut model = Model::new(kiln::kernels::select("auto").unwrap(), &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
    /// // Column 0 is mostly -0.5, column 1 mostly 2.0: shifted.
    /// let x = [-0.5f32, 2.0, -0.5, 2.0, 1.5, 2.0, -0.5, -1.0];
    /// assert!(model.shift_features(Inputs::from(&x[..])));
    /// // Already mostly zero: unchanged.
    /// assert!(!model.shift_features(Inputs::from(&[0f32, 0.0, 0.0, 3.0][..])));
    /// ```
    pub fn shift_features(&mut self, inputs: Inputs<'_>) -> bool {
        let (d, n) = (self.slots[0].dims.k, self.slots[0].dims.n);
        self.shift = match inputs {
            Inputs::Features(x) if self.slots.len() > 1 => Shift::for_features(x, d, n),
            _ => None,
        };
        self.shift.is_some()
    }

    /// Forward pass only, in inference mode (Dropout passes values
    /// through), as evaluation runs it: probabilities of `batch` into the
    /// workspace, and the summed loss and correct count. Panics when a row
    /// is out of range or a label is not below `C`.
    pub fn forward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        self.forward_in(batch, false)
    }

    /// The forward pass in training mode (`training`: Dropouts drop) or in
    /// inference mode.
    fn forward_in(&mut self, batch: Batch<'_>, training: bool) -> XentStats<T> {
        let b = batch.rows.len();
        self.reserve(b);
        let last = self.slots.len() - 1;
        let (be, times, w) = (self.be, &mut self.times, &self.params[..]);
        let Workspace { acts, input, p, dz, pre, keep, .. } = &mut self.ws;
        let mode = if training && self.arch.after.iter().any(|d| dropout::acts_in_training(d)) {
            Mode::Training { key: StepKey { seed: self.seed, step: self.iterations }, pre, keep }
        } else {
            Mode::Inference
        };
        let mut t = Instant::now();
        // Training shifts features; inference reads them as they are, as
        // a Predictor does (the same bits).
        let shift = match (&mut self.shift, batch.inputs) {
            (Some(shift), Inputs::Features(_)) if training => {
                shift.refresh(be, &self.slots[0], w, self.path);
                Some((shift.offsets(), shift.bias()))
            }
            _ => None,
        };
        self.shifted = shift.is_some() && last > 0;
        let a = forward_hidden(
            be,
            (&self.arch, &self.slots, w),
            (acts, input, mode),
            (batch.inputs, batch.rows, shift),
            self.path,
            |l| lap(&mut t, &mut times.forward[l]),
        );
        let s = &self.slots[last];
        let (p, dz) = (&mut p[..b * s.dims.n], &mut dz[..b * s.dims.n]); // (B, C) each
        let weights = Weights::new(&w[s.kernel.clone()], &w[s.bias.clone()]);
        let stats = be.output_softmax_xent(p, dz, a, weights, Rows::new(batch.labels, batch.rows), s.dims);
        lap(&mut t, &mut times.forward[last]);
        stats
    }

    /// Probabilities of the last [`Model::forward`], `(B, C)`.
    pub fn probs(&self, b: usize) -> &[T] {
        &self.ws.p[..b * self.arch.classes()]
    }

    /// Forward and backward in training mode (with the masks the next
    /// update would draw): fills the gradients ([`Model::grads`]) of the
    /// mean clipped cross-entropy of `batch`; returns the forward's stats.
    pub fn forward_backward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        let stats = self.forward_in(batch, true);
        self.backward(batch, false);
        stats
    }

    /// The backward pass of the last [`Model::forward`] on `batch`, from the
    /// output layer down, on the pool's threads as [`Plan`] runs it. With
    /// `update`, it also applies the optimizer's next step: each kernel
    /// below the output layer is updated inside its gradient product (after
    /// its input gradient read the old weights), then the rest of the arena
    /// in one flat pass.
    fn backward(&mut self, batch: Batch<'_>, update: bool) {
        let last = self.slots.len() - 1;
        let plan = Plan::new(&self.slots);
        let step = update.then(|| self.next_step());
        let mut bw = Backward {
            be: self.be,
            path: self.path,
            arch: &self.arch,
            slots: &self.slots,
            b: batch.rows.len(),
            ws: &mut self.ws,
            w: &mut self.params,
            g: &mut self.grads,
            state: &mut self.state,
            step,
            // As the forward of this batch shifted its features.
            offsets: self.shift.as_ref().filter(|_| self.shifted).map(|s| s.offsets()),
            times: &mut self.times,
            t: Instant::now(),
        };
        // Everything above the input layer that may run while the input
        // layer's pixels are listed.
        let above = |bw: &mut Backward<'_, T>| {
            bw.output();
            plan.snapshot(&mut bw.ws.kernel_copy, bw.w);
            if plan.hidden_while_listing() {
                bw.hidden_layers(&plan);
            }
        };
        if last == 0 {
            above(&mut bw);
        } else {
            let (inputs, k0) = ((batch.inputs, batch.rows), self.slots[0].dims.k);
            let lists = pairing::listing_pixels(self.be, inputs, k0, self.path, &mut || above(&mut bw));
            if !plan.hidden_while_listing() {
                bw.hidden_layers(&plan);
            }
            bw.input(lists);
        }
        if let Some(step) = step {
            let tail = self.tail..bw.w.len();
            self.be.update(fused(bw.w, bw.state, &tail, step), &bw.g[tail]);
            lap(&mut bw.t, &mut bw.times.update);
            self.iterations += 1;
        }
    }

    /// The coefficients of the next update (number `iterations + 1`, at
    /// the schedule's learning rate after `iterations` updates).
    fn next_step(&self) -> kiln_kernels::Step<T> {
        self.opt.step(self.iterations + 1, self.schedule.lr(self.opt.lr(), self.iterations))
    }

    /// One optimizer step of every parameter from the gradients (after
    /// [`Model::forward_backward`]).
    pub fn update(&mut self) {
        let mut t = Instant::now();
        let step = self.next_step();
        let all = 0..self.params.len();
        self.be.update(fused(&mut self.params, &mut self.state, &all, step), &self.grads);
        lap(&mut t, &mut self.times.update);
        self.iterations += 1;
    }

    /// A whole training step on `batch`: forward, backward, update (the
    /// same weights, bit for bit, as `forward_backward` then `update`). When
    /// the loss is not finite nothing is updated and `Err` carries the stats.
    pub fn train_step(&mut self, batch: Batch<'_>) -> Result<XentStats<T>, XentStats<T>> {
        let stats = self.forward_in(batch, true);
        if !stats.loss_sum.is_finite() {
            return Err(stats);
        }
        self.backward(batch, true);
        Ok(stats)
    }
}

/// One step's backward, borrowed from a [`Model`]: what each layer's
/// backward computes (the order and the threads are [`Plan`]'s). The phase
/// timer `t` laps after each layer.
struct Backward<'m, T: Real> {
    be: &'m dyn Backend<T>,
    path: Layer1Path,
    arch: &'m Arch,
    slots: &'m [Slot],
    /// The batch's rows.
    b: usize,
    ws: &'m mut Workspace<T>,
    w: &'m mut [T],
    g: &'m mut [T],
    state: &'m mut [AlignedVec<T>; MAX_SLOTS],
    /// The update's coefficients, when the step updates.
    step: Option<kiln_kernels::Step<T>>,
    /// Layer 1's input offsets, when its features were shifted.
    offsets: Option<&'m [T]>,
    times: &'m mut PhaseTimes,
    t: Instant,
}

impl<T: Real> Backward<'_, T> {
    /// The output layer `L`: `dW_L = A^T dZ`, `db_L`, and `dZ_{L-1} = (dZ
    /// W_L^T) * act'` through the Dropouts below it.
    fn output(&mut self) {
        let (be, b, last) = (self.be, self.b, self.slots.len() - 1);
        let s = &self.slots[last];
        let ws = &mut *self.ws;
        let dz = &ws.dz[..b * s.dims.n];
        let input = if last == 0 { &ws.input[..b * s.dims.k] } else { &ws.acts[last - 1][..b * s.dims.k] };
        be.output_backward(split_pair(self.g, &s.kernel, &s.bias), input, dz, s.dims);
        if last == 0 {
            return;
        }
        let (act, drops) = below(self.arch, last);
        let bk = b * s.dims.k;
        let h = &ws.pre[last - 1][..if drops.is_empty() { 0 } else { bk }];
        let masks = dropout::masks(drops, &ws.keep[last - 1][..dropout::mask_len(drops, b, s.dims.k)], h.len());
        let derivative = dropout::kernel_derivative(act, &ws.acts[last - 1][..bk], h, &masks);
        let da = &mut ws.grads[last - 1][..bk];
        be.output_backward_input(da, dz, &self.w[s.kernel.clone()], derivative, s.dims);
    }

    /// Laps the output layer's time, then runs the hidden layers top down.
    fn hidden_layers(&mut self, plan: &Plan) {
        let last = self.slots.len() - 1;
        lap(&mut self.t, &mut self.times.backward[last]);
        for l in (1..last).rev() {
            self.hidden(l, plan);
            lap(&mut self.t, &mut self.times.backward[l]);
        }
    }

    /// Hidden layer `l`: `dZ_{l-1} := (dZ_l W_l^T)` through the Dropouts'
    /// masks and `act_below'`, and `dW_l`, `db_l` (with the step's update
    /// of `W_l`), run as `plan` says.
    fn hidden(&mut self, l: usize, plan: &Plan) {
        let (be, path, b, step) = (self.be, self.path, self.b, self.step);
        let s = &self.slots[l];
        let (act_below, drops) = below(self.arch, l);
        let ws = &mut *self.ws;
        let (lower, upper) = ws.grads.split_at_mut(l);
        let dz = &upper[0][..b * s.dims.n];
        let a = &ws.acts[l - 1][..b * s.dims.k];
        let da = &mut lower[l - 1][..b * s.dims.k];
        let h = &ws.pre[l - 1][..if drops.is_empty() { 0 } else { b * s.dims.k }];
        let masks = dropout::masks(drops, &ws.keep[l - 1][..dropout::mask_len(drops, b, s.dims.k)], h.len());
        let derivative = dropout::kernel_derivative(act_below, a, h, &masks);
        let grads = split_pair(self.g, &s.kernel, &s.bias);
        let state = &mut *self.state;
        match plan.kernel_copy(&ws.kernel_copy, &s.kernel) {
            Some(copy) => {
                let update = step.map(|st| fused(self.w, state, &s.kernel, st));
                be.hidden_backward_both(InputGrad::new(da, dz, copy, derivative), grads, update, a, path, s.dims);
            }
            None => {
                be.hidden_backward_input(da, dz, &self.w[s.kernel.clone()], derivative, path, s.dims);
                let update = step.map(|st| fused(self.w, state, &s.kernel, st));
                be.hidden_backward(grads, update, a, dz, path, s.dims);
            }
        }
    }

    /// The input layer: `dW_0 = X^T dZ_0` (its input gradient is never
    /// needed), from the listed pixels or the gathered features.
    fn input(&mut self, lists: Option<InputLists<'_>>) {
        let (be, path, b) = (self.be, self.path, self.b);
        let s = &self.slots[0];
        let dz = &self.ws.grads[0][..b * s.dims.n];
        let grads = split_pair(self.g, &s.kernel, &s.bias);
        let u = self.step.map(|st| fused(self.w, self.state, &s.kernel, st));
        // The gathered features (empty for pixels, which come listed).
        let x = &self.ws.input[..if lists.is_some() { 0 } else { b * s.dims.k }];
        match (lists, self.offsets) {
            (Some(lists), _) => be.input_backward_listed(grads, u, lists, dz, path, s.dims),
            (None, None) => be.hidden_backward(grads, u, x, dz, path, s.dims),
            // Shifted features: the gradient of S, corrected to X's, then
            // the update (the same bits as fused into the product).
            (None, Some(offsets)) => {
                let Grads { kernel: dw, bias: db } = grads;
                be.hidden_backward(Grads::new(&mut *dw, &mut *db), None, x, dz, path, s.dims);
                shift::correct_gradient(dw, s, offsets, db);
                if let Some(u) = u {
                    be.update(u, dw);
                }
            }
        }
        lap(&mut self.t, &mut self.times.backward[0]);
    }
}

/// What Dense layer `l`'s input gradient passes through below it: the
/// activation of layer `l - 1` and the Dropouts after that layer.
fn below(arch: &Arch, l: usize) -> (Activation, &[Elementwise]) {
    (arch.dense[l - 1].activation, &arch.after[l - 1])
}

/// The update of the range `r` of the arena `w`, with `r` of each used
/// state slot.
fn fused<'a, T: Real>(
    w: &'a mut [T],
    state: &'a mut [AlignedVec<T>; MAX_SLOTS],
    r: &Range<usize>,
    step: kiln_kernels::Step<T>,
) -> Update<'a, T> {
    let slots = state.each_mut().map(|s| if s.is_empty() { &mut [][..] } else { &mut s[r.clone()] });
    Update::new(part(w, r), slots, step)
}

/// The disjoint ranges `a` (a kernel) and `b` (a bias, after it) of `v`.
fn split_pair<'a, T>(v: &'a mut [T], a: &Range<usize>, b: &Range<usize>) -> Grads<'a, T> {
    assert!(a.end <= b.start, "kernels precede biases in the arena");
    let (lo, hi) = v.split_at_mut(b.start);
    Grads::new(&mut lo[a.clone()], &mut hi[..b.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_sets_each_updates_learning_rate() {
        // SGD keeps no state, so a scheduled model's second update must
        // equal one constant-rate update at the schedule's second rate.
        use kiln_kernels::Sgd;
        let be = kiln_kernels::select("scalar").unwrap();
        let arch = Arch::parse("8:relu", 4, 3).unwrap();
        let params = Params::<f32>::glorot(&arch, 2);
        let pixels: Vec<u8> = (0..40).map(|i| (i * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..10).map(|i| i % 3).collect();
        let rows: Vec<u32> = (0..10).collect();
        let batch = Batch { inputs: Inputs::Pixels(&pixels), labels: &labels, rows: &rows };
        let sgd = |lr| Optimizer::Sgd(Sgd { lr, ..Sgd::default() });
        let sched = Schedule::Exponential { decay_steps: 1, rate: 0.5 };
        let mut scheduled = Model::new(be, &params, sgd(0.1)).unwrap().with_schedule(sched);
        let mut constant = Model::new(be, &params, sgd(0.1)).unwrap();
        scheduled.train_step(batch).unwrap();
        constant.train_step(batch).unwrap();
        assert_eq!(scheduled.params().values(), constant.params().values(), "step 0 runs at the initial rate");
        let second_rate = f64::from(sched.lr::<f32>(0.1, 1));
        assert_eq!(second_rate, f64::from(0.1f32 * 0.5));
        let mut by_hand = Model::new(be, &constant.params(), sgd(second_rate)).unwrap();
        scheduled.train_step(batch).unwrap();
        by_hand.train_step(batch).unwrap();
        constant.train_step(batch).unwrap();
        assert_eq!(scheduled.params().values(), by_hand.params().values());
        assert_ne!(scheduled.params().values(), constant.params().values());
    }
}
