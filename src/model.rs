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

use crate::rng::{Rng, Stream};
use anyhow::{bail, ensure, Result};
use kiln_kernels::{
    AlignedVec, Backend, Dims, Layer1Path, Optimizer, PanelLayout, Real, Schedule, Update, XentStats, MAX_SLOTS,
};
use std::ops::Range;
use std::time::{Duration, Instant};

pub use kiln_kernels::Activation;

/// One `Dense(units, activation)` layer, as Keras writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dense {
    /// Output width.
    pub units: usize,
    /// Applied to `x @ kernel + bias`.
    pub activation: Activation,
}

/// Most parameters a model may have (2^32 f32 are 16 GiB per copy, and a
/// model keeps three copies): a guard against widths that overflow memory.
const MAX_PARAMETERS: usize = 1 << 32;

/// A validated stack of Dense layers on `inputs` pixels: at least one
/// layer, every width at least 1, softmax on the output layer and nowhere
/// else. Built by [`Arch::new`], [`Arch::parse`] or [`Sequential`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    inputs: usize,
    layers: Vec<Dense>,
}

impl Arch {
    /// The stack `layers` on `inputs` pixels, or an error that says what is
    /// wrong and what was expected.
    ///
    /// ```
    /// use kiln::model::{Activation, Arch, Dense};
    /// let arch = Arch::new(784, vec![Dense { units: 10, activation: Activation::Softmax }]).unwrap();
    /// assert_eq!(arch.parameters(), 7850);
    /// assert!(Arch::new(784, vec![Dense { units: 10, activation: Activation::Relu }]).is_err());
    /// ```
    pub fn new(inputs: usize, layers: Vec<Dense>) -> Result<Arch> {
        ensure!(inputs > 0, "the input has 0 pixels; expected at least 1");
        ensure!(!layers.is_empty(), "the model has no layers; expected at least the output layer (e.g. 10:softmax)");
        for (l, d) in layers.iter().enumerate() {
            ensure!(d.units > 0, "layer {} has 0 units; expected at least 1", l + 1);
            let last = l + 1 == layers.len();
            if d.activation == Activation::Softmax && !last {
                bail!("layer {} is softmax, which only the output layer may be (it is fused with the loss)", l + 1);
            }
            if last && d.units > 256 {
                bail!("the output layer has {} units; labels are bytes, so at most 256 classes", d.units);
            }
            if last && d.activation != Activation::Softmax {
                bail!(
                    "the output layer {} is {}; expected softmax (kiln trains with categorical cross-entropy)",
                    l + 1,
                    d.activation
                );
            }
        }
        let arch = Arch { inputs, layers };
        let mut total = 0usize;
        for l in 0..arch.layers.len() {
            let (i, o) = arch.kernel_shape(l);
            total = i
                .checked_mul(o)
                .and_then(|k| k.checked_add(o))
                .and_then(|p| total.checked_add(p))
                .unwrap_or(usize::MAX);
        }
        ensure!(
            total <= MAX_PARAMETERS,
            "the layers {} need {} parameters, more than the {MAX_PARAMETERS} kiln can hold in memory",
            arch.spec(),
            if total == usize::MAX { "more than 2^64".to_string() } else { total.to_string() }
        );
        Ok(arch)
    }

    /// Parses `512:relu,256:relu,10:softmax` (Keras order, `units:activation`
    /// per layer). When the last layer given is not softmax, the output
    /// layer `classes:softmax` is appended; when it is, its width must be
    /// `classes`.
    ///
    /// ```
    /// use kiln::model::Arch;
    /// let a = Arch::parse("512:relu", 784, 10).unwrap();
    /// assert_eq!(a.spec(), "512:relu,10:softmax");
    /// assert!(Arch::parse("512:relu,9:softmax", 784, 10).is_err());
    /// ```
    pub fn parse(spec: &str, inputs: usize, classes: usize) -> Result<Arch> {
        let expected = "expected UNITS:ACTIVATION[,...], e.g. 512:relu,256:relu,10:softmax";
        ensure!(!spec.trim().is_empty(), "the layer list is empty; {expected}");
        let mut layers = Vec::new();
        for (l, part) in spec.split(',').enumerate() {
            let part = part.trim();
            let Some((units, act)) = part.split_once(':') else {
                bail!("layer {} `{part}` has no activation; {expected}", l + 1);
            };
            let units: usize = units.trim().parse().map_err(|_| {
                anyhow::anyhow!("layer {} `{part}`: `{units}` is not a number of units; {expected}", l + 1)
            })?;
            let activation: Activation =
                act.trim().parse().map_err(|e| anyhow::anyhow!("layer {} `{part}`: {e}", l + 1))?;
            layers.push(Dense { units, activation });
        }
        if layers.last().is_some_and(|d| d.activation != Activation::Softmax) {
            layers.push(Dense { units: classes, activation: Activation::Softmax });
        }
        let out = layers.last().expect("at least one layer").units;
        ensure!(
            out == classes,
            "the output layer has {out} units, but the data has {classes} classes; expected {classes}:softmax"
        );
        Arch::new(inputs, layers)
    }

    /// Pixels per input image.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The layers, input layer first.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// Classes: the output layer's width.
    pub fn classes(&self) -> usize {
        self.layers.last().expect("validated: at least one layer").units
    }

    /// `(in, out)` of layer `l`'s kernel.
    pub fn kernel_shape(&self, l: usize) -> (usize, usize) {
        let fan_in = if l == 0 { self.inputs } else { self.layers[l - 1].units };
        (fan_in, self.layers[l].units)
    }

    /// Parameters of all layers (kernels and biases).
    pub fn parameters(&self) -> usize {
        (0..self.layers.len()).map(|l| self.kernel_shape(l)).map(|(i, o)| i * o + o).sum()
    }

    /// The layers in `--layers` syntax, e.g. `512:relu,10:softmax`.
    pub fn spec(&self) -> String {
        self.layers.iter().map(|d| format!("{}:{}", d.units, d.activation)).collect::<Vec<_>>().join(",")
    }

    /// The model as Keras's `model.summary()` prints it: each layer, its
    /// output shape, its parameter count, and the total.
    pub fn summary(&self) -> String {
        let rule = "-".repeat(62);
        let mut s = format!("{:<30}{:<20}{:>12}\n{rule}\n", "Layer (type)", "Output Shape", "Param #");
        for (l, d) in self.layers.iter().enumerate() {
            let (i, o) = self.kernel_shape(l);
            let name = format!("dense_{} (Dense, {})", l + 1, d.activation);
            s.push_str(&format!("{name:<30}{:<20}{:>12}\n", format!("(None, {o})"), i * o + o));
        }
        s.push_str(&format!("{rule}\nTotal params: {} (input: {} pixels)", self.parameters(), self.inputs));
        s
    }
}

/// Keras's `Sequential` builder: `Sequential::new(784).dense(512,
/// Activation::Relu).dense(10, Activation::Softmax).build()`.
///
/// ```
/// use kiln::model::{Activation, Sequential};
/// let arch = Sequential::new(784).dense(512, Activation::Relu).dense(10, Activation::Softmax).build().unwrap();
/// assert_eq!(arch.spec(), "512:relu,10:softmax");
/// assert_eq!(arch.parameters(), 407_050);
/// ```
#[derive(Clone, Debug)]
pub struct Sequential {
    inputs: usize,
    layers: Vec<Dense>,
}

impl Sequential {
    /// An empty stack on images of `inputs` pixels.
    pub fn new(inputs: usize) -> Self {
        Sequential { inputs, layers: Vec::new() }
    }

    /// Adds `Dense(units, activation)`.
    pub fn dense(mut self, units: usize, activation: Activation) -> Self {
        self.layers.push(Dense { units, activation });
        self
    }

    /// The validated architecture (see [`Arch::new`]).
    pub fn build(self) -> Result<Arch> {
        Arch::new(self.inputs, self.layers)
    }
}

/// The parameters of a model as Keras keeps them: for each layer, its kernel
/// `(in, out)` row-major (`y = x @ kernel + bias`) and its bias, in one
/// vector. The shapes always match the [`Arch`].
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T: Real> {
    arch: Arch,
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
        for l in 0..arch.layers.len() {
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
        for l in 0..self.arch.layers.len() {
            let (i, o) = self.arch.kernel_shape(l);
            out.push((format!("dense_{}.kernel", l + 1), vec![i, o], self.kernel(l)));
            out.push((format!("dense_{}.bias", l + 1), vec![o], self.bias(l)));
        }
        out
    }
}

/// Where one layer's tensors sit in a [`Model`]'s arenas.
#[derive(Clone, Debug)]
struct Slot {
    /// `K = in`, `N = out`.
    dims: Dims,
    /// The kernel's storage (the backend's panels, or row-major for the output layer).
    layout: PanelLayout,
    kernel: Range<usize>,
    bias: Range<usize>,
}

/// Activations and their gradients for one batch of at most `capacity` rows.
#[derive(Debug)]
struct Workspace<T: Real> {
    /// `(B, U_l)` outputs of layers 0 .. L-1.
    acts: Vec<AlignedVec<T>>,
    /// `(B, U_l)` gradients w.r.t. the pre-activations of layers 0 .. L-1.
    grads: Vec<AlignedVec<T>>,
    /// `(B, D)` the gathered input, only for a one-layer network.
    input: AlignedVec<T>,
    /// `(B, C)` softmax probabilities.
    p: AlignedVec<T>,
    /// `(B, C)` gradient of the mean loss w.r.t. the logits.
    dz: AlignedVec<T>,
    /// A copy of the hidden layers' kernels (`Model::backward` runs their
    /// input gradients from it while their updates run; empty until then).
    kernel_copy: AlignedVec<T>,
    capacity: usize,
}

impl<T: Real> Workspace<T> {
    fn new(arch: &Arch, capacity: usize) -> Self {
        let hidden = &arch.layers[..arch.layers.len() - 1];
        let buf = |w: usize| AlignedVec::zeroed(capacity * w);
        Workspace {
            acts: hidden.iter().map(|d| buf(d.units)).collect(),
            grads: hidden.iter().map(|d| buf(d.units)).collect(),
            input: if hidden.is_empty() { buf(arch.inputs) } else { AlignedVec::zeroed(0) },
            p: buf(arch.classes()),
            dz: buf(arch.classes()),
            kernel_copy: AlignedVec::zeroed(0),
            capacity,
        }
    }

    /// Hidden layer `l`'s backward on a batch of `b` (`s` its slot,
    /// `act_below` the activation of the layer below): `dZ_{l-1} := (dZ_l
    /// W_l^T) * act_below'`, then `dW_l`, `db_l` (with `step`'s update of
    /// `W_l` when given). With `copied`, the input gradient runs side by
    /// side with the weight gradient, reading `W_l` from the copy of the
    /// hidden kernels (which starts at arena index `copied`) when the
    /// update changes it meanwhile.
    fn hidden_backward(
        &mut self,
        be: &dyn Backend<T>,
        (l, s, act_below, b): (usize, &Slot, Activation, usize),
        (w, g, state): (&mut [T], &mut [T], &mut [AlignedVec<T>; MAX_SLOTS]),
        (step, path): (Option<kiln_kernels::Step<T>>, Layer1Path),
        copied: Option<usize>,
    ) {
        let (lower, upper) = self.grads.split_at_mut(l);
        let dz = &upper[0][..b * s.dims.n];
        let a = &self.acts[l - 1][..b * s.dims.k];
        let da = &mut lower[l - 1][..b * s.dims.k];
        let (gk, gb) = split_pair(g, &s.kernel, &s.bias);
        // The kernel the input gradient reads: the copy when the other side
        // updates it meanwhile.
        let (kernel, u) = match (copied, step) {
            (Some(start), Some(st)) => {
                (&self.kernel_copy[s.kernel.start - start..s.kernel.end - start], Some(fused(w, state, &s.kernel, st)))
            }
            (Some(_), None) => (&w[s.kernel.clone()], None),
            (None, _) => {
                be.hidden_backward_input(da, dz, &w[s.kernel.clone()], a, s.dims, act_below, path);
                be.hidden_backward(gk, gb, a, dz, s.dims, step.map(|st| fused(w, state, &s.kernel, st)), path);
                return;
            }
        };
        kiln_kernels::side_by_side(
            || be.hidden_backward_input(da, dz, kernel, a, s.dims, act_below, path),
            || be.hidden_backward(gk, gb, a, dz, s.dims, u, path),
        );
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
        let last = arch.layers.len() - 1;
        let (slots, at) = arena_slots(be, &arch);
        let tail = slots[last].kernel.start;
        let mut model = Model {
            be,
            opt,
            schedule: Schedule::Constant,
            iterations: 0,
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

    /// Forward pass only: probabilities of `batch` into the workspace, and
    /// the summed loss and correct count. Panics when a row is out of range
    /// or a label is not below `C`.
    pub fn forward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        let b = batch.rows.len();
        self.reserve(b);
        let last = self.slots.len() - 1;
        let (be, times, w) = (self.be, &mut self.times, &self.params[..]);
        let Workspace { acts, input, p, dz, .. } = &mut self.ws;
        let mut t = Instant::now();
        let a = forward_hidden(
            be,
            (&self.arch, &self.slots, w),
            (acts, input),
            (batch.pixels, batch.rows),
            self.path,
            |l| lap(&mut t, &mut times.forward[l]),
        );
        let s = &self.slots[last];
        let (p, dz) = (&mut p[..b * s.dims.n], &mut dz[..b * s.dims.n]); // (B, C) each
        let (kernel, bias) = (&w[s.kernel.clone()], &w[s.bias.clone()]);
        let stats = be.output_softmax_xent(p, dz, a, kernel, bias, batch.labels, batch.rows, s.dims);
        lap(&mut t, &mut times.forward[last]);
        stats
    }

    /// Probabilities of the last [`Model::forward`], `(B, C)`.
    pub fn probs(&self, b: usize) -> &[T] {
        &self.ws.p[..b * self.arch.classes()]
    }

    /// Forward and backward: fills the gradients ([`Model::grads`]) of the
    /// mean clipped cross-entropy of `batch`; returns the forward's stats.
    pub fn forward_backward(&mut self, batch: Batch<'_>) -> XentStats<T> {
        let stats = self.forward(batch);
        self.backward(batch, false);
        stats
    }

    /// The backward pass of the last [`Model::forward`] on `batch`, from the
    /// output layer down. With `update`, it also applies the optimizer's
    /// next step: each kernel below the output layer is updated inside its
    /// gradient product (after its input gradient used the old weights),
    /// then the rest of the arena in one flat pass.
    fn backward(&mut self, batch: Batch<'_>, update: bool) {
        let b = batch.rows.len();
        let last = self.slots.len() - 1;
        let step = self.next_step();
        // On a pool of two threads, a network with hidden layers runs each
        // hidden layer's input gradient (from a copy of the kernels, which
        // its update changes meanwhile) on one thread beside its weight
        // gradient and update on the other, each op alone on its core:
        // split over both threads, every op listed its operand's non-zeros
        // twice and waited for the slower half. Before them the output
        // layer and the copy run while the backend may list the batch's
        // pixels for the input layer, whose weight gradient comes last on
        // both threads.
        let paired = last >= 2 && kiln_kernels::runs_side_by_side();
        // The hidden layers' kernels, contiguous in the arena.
        let hidden = if paired { self.slots[1].kernel.start..self.slots[last - 1].kernel.end } else { 0..0 };
        let (be, path, ws, times) = (self.be, self.path, &mut self.ws, &mut self.times);
        let (w, g, state) = (&mut self.params[..], &mut self.grads[..], &mut self.state);
        let k0 = self.slots[0].dims.k;
        let mut t = Instant::now();
        // Everything above the input layer (when paired: the output layer
        // and the copy); meanwhile the backend may list the batch's non-zero
        // pixels for the input layer on another thread.
        let mut above = || {
            // The output layer: dW_L = A^T dZ, db_L, and dZ_{L-1} = (dZ W_L^T) * act'.
            let s = &self.slots[last];
            let dz = &ws.dz[..b * s.dims.n];
            let input = if last == 0 { &ws.input[..b * s.dims.k] } else { &ws.acts[last - 1][..b * s.dims.k] };
            let (gk, gb) = split_pair(g, &s.kernel, &s.bias);
            be.output_backward(gk, gb, input, dz, s.dims);
            if last > 0 {
                let act = self.arch.layers[last - 1].activation;
                let da = &mut ws.grads[last - 1][..b * s.dims.k];
                be.output_backward_input(da, dz, &w[s.kernel.clone()], &ws.acts[last - 1][..b * s.dims.k], s.dims, act);
            }
            if paired {
                // Only an update changes the kernels while they are read.
                if update {
                    // Made once a model first pairs (most never do).
                    if ws.kernel_copy.len() != hidden.len() {
                        ws.kernel_copy = AlignedVec::zeroed(hidden.len());
                    }
                    ws.kernel_copy.copy_from_slice(&w[hidden.clone()]);
                }
                return;
            }
            lap(&mut t, &mut times.backward[last]);
            // Hidden layers, top down.
            for l in (1..last).rev() {
                let (s, act_below) = (&self.slots[l], self.arch.layers[l - 1].activation);
                ws.hidden_backward(be, (l, s, act_below, b), (w, g, state), (update.then_some(step), path), None);
                lap(&mut t, &mut times.backward[l]);
            }
        };
        if last == 0 {
            above();
        } else {
            let lists = be.overlap_input_lists(batch.pixels, batch.rows, k0, path, &mut above);
            if paired {
                lap(&mut t, &mut times.backward[last]);
                for l in (1..last).rev() {
                    let (s, act_below) = (&self.slots[l], self.arch.layers[l - 1].activation);
                    let copied = Some(hidden.start);
                    ws.hidden_backward(be, (l, s, act_below, b), (w, g, state), (update.then_some(step), path), copied);
                    lap(&mut t, &mut times.backward[l]);
                }
            }
            // The input layer: dW_0 = X^T dZ_0 (its input gradient is never needed).
            let s = &self.slots[0];
            let dz = &ws.grads[0][..b * s.dims.n];
            let (gk, gb) = split_pair(g, &s.kernel, &s.bias);
            let u = update.then(|| fused(w, state, &s.kernel, step));
            be.input_backward_listed(lists, (gk, gb), dz, s.dims, path, u);
            lap(&mut t, &mut times.backward[0]);
        }
        if update {
            let tail = self.tail..w.len();
            be.update(fused(w, state, &tail, step), &g[tail]);
            lap(&mut t, &mut times.update);
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
        let stats = self.forward(batch);
        if !stats.loss_sum.is_finite() {
            return Err(stats);
        }
        self.backward(batch, true);
        Ok(stats)
    }
}

/// Where each layer's tensors sit in an arena of `arch`'s parameters on
/// `be`: every kernel in the backend's panels (the output layer's
/// row-major), then every bias. Returns the slots and the arena's length.
fn arena_slots<T: Real>(be: &dyn Backend<T>, arch: &Arch) -> (Vec<Slot>, usize) {
    let last = arch.layers.len() - 1;
    let mut slots = Vec::new();
    let mut at = 0;
    for l in 0..=last {
        let (k, n) = arch.kernel_shape(l);
        let layout = if l < last { be.weight_layout(k, n) } else { PanelLayout::row_major(k, n) };
        slots.push(Slot { dims: Dims { k, n }, layout, kernel: at..at + layout.len(), bias: 0..0 });
        at += layout.len();
    }
    for s in &mut slots {
        s.bias = at..at + s.dims.n;
        at += s.dims.n;
    }
    (slots, at)
}

/// Packs row-major `params` into an arena laid out as `slots`.
fn pack_into<T: Real>(slots: &[Slot], params: &Params<T>, arena: &mut [T]) {
    for (l, s) in slots.iter().enumerate() {
        s.layout.pack(params.kernel(l), &mut arena[s.kernel.clone()]);
        arena[s.bias.clone()].copy_from_slice(params.bias(l));
    }
}

/// The forward pass below the output layer, for rows `rows` of `pixels`
/// (`(R, D)` u8): each hidden layer's activation into `acts[l]` (`(B,
/// U_l)`), calling `done(l)` after layer `l`. Returns the output layer's
/// input, `(B, K_L)`: the last hidden activation, or for a one-layer
/// network the batch gathered into `input` as `pixel / 255`.
fn forward_hidden<'a, T: Real>(
    be: &dyn Backend<T>,
    (arch, slots, w): (&Arch, &[Slot], &[T]),
    (acts, input): (&'a mut [AlignedVec<T>], &'a mut AlignedVec<T>),
    (pixels, rows): (&[u8], &[u32]),
    path: Layer1Path,
    mut done: impl FnMut(usize),
) -> &'a [T] {
    let b = rows.len();
    let last = slots.len() - 1;
    for (l, s) in slots[..last].iter().enumerate() {
        let act = arch.layers[l].activation;
        let (kernel, bias) = (&w[s.kernel.clone()], &w[s.bias.clone()]);
        let (below, here) = acts.split_at_mut(l);
        let h = &mut here[0][..b * s.dims.n]; // (B, U_l)
        if l == 0 {
            be.input_forward(h, pixels, rows, kernel, bias, s.dims, act, path);
        } else {
            be.hidden_forward(h, &below[l - 1][..b * s.dims.k], kernel, bias, s.dims, act, path);
        }
        done(l);
    }
    let k = slots[last].dims.k;
    if last == 0 {
        gather(&mut input[..b * k], pixels, rows, k);
        &input[..b * k]
    } else {
        &acts[last - 1][..b * k]
    }
}

/// A network that predicts, and nothing more: its weights in the
/// backend's layout and one batch's activations. No gradients, no
/// optimizer state, no labels: what `predict` and `serve` run. Its
/// probabilities are bit-identical to those of a [`Model`]'s forward pass
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
    /// `(B, D)` the gathered input, only for a one-layer network.
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
        let hidden = &arch.layers[..arch.layers.len() - 1];
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

    /// Softmax probabilities `(B, C)` of rows `rows` of `pixels` (`(R, D)`
    /// u8 images). Panics when there are more rows than the capacity or a
    /// row is out of range.
    pub fn probs(&mut self, pixels: &[u8], rows: &[u32]) -> &[T] {
        let b = rows.len();
        assert!(b <= self.capacity, "batch of {b} rows exceeds the capacity {}", self.capacity);
        let Weights { arch, slots, values } = &*self.weights;
        let a = forward_hidden(
            self.be,
            (arch, slots, values),
            (&mut self.acts, &mut self.input),
            (pixels, rows),
            self.path,
            |_| {},
        );
        let s = &slots[slots.len() - 1];
        let p = &mut self.p[..b * s.dims.n];
        self.be.output_softmax(p, a, &values[s.kernel.clone()], &values[s.bias.clone()], s.dims);
        p
    }

    /// Softmax probabilities of every image of `pixels` (`N` images of `D`
    /// u8 pixels, row-major), one `Vec` of `C` per image; an error when
    /// `pixels` is not a whole number of images.
    pub fn predict(&mut self, pixels: &[u8]) -> Result<Vec<Vec<T>>> {
        let (d, c) = (self.arch().inputs, self.arch().classes());
        ensure!(
            pixels.len().is_multiple_of(d),
            "{} pixels are not a whole number of images of {d} pixels (the model's input)",
            pixels.len()
        );
        let rows: Vec<u32> = (0..(pixels.len() / d) as u32).collect();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.capacity) {
            out.extend(self.probs(pixels, chunk).chunks_exact(c).map(<[T]>::to_vec));
        }
        Ok(out)
    }
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
fn split_pair<'a, T>(v: &'a mut [T], a: &Range<usize>, b: &Range<usize>) -> (&'a mut [T], &'a mut [T]) {
    assert!(a.end <= b.start, "kernels precede biases in the arena");
    let (lo, hi) = v.split_at_mut(b.start);
    (&mut lo[a.clone()], &mut hi[..b.len()])
}

/// `out (B, D) := pixels[rows] / 255` (the input of a one-layer network).
fn gather<T: Real>(out: &mut [T], pixels: &[u8], rows: &[u32], d: usize) {
    let lut = kiln_kernels::pixel_table::<T>();
    for (o, &r) in out.chunks_exact_mut(d.max(1)).zip(rows) {
        let src = &pixels[r as usize * d..(r as usize + 1) * d];
        for (v, &p) in o.iter_mut().zip(src) {
            *v = lut[usize::from(p)];
        }
    }
}

/// Softmax probabilities `(N, C)` of `pixels` (`N` images of `D` u8 pixels,
/// row-major), computed with `params` on `be`, one `Vec` of `C` per image;
/// an error when `pixels` is not a whole number of `D`-pixel images.
pub fn predict(be: &dyn Backend<f32>, params: &Params<f32>, pixels: &[u8]) -> Result<Vec<Vec<f32>>> {
    let n = pixels.len() / params.arch.inputs;
    Predictor::new(be, params, n.clamp(1, 1024)).predict(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                        model.forward(Batch { pixels: &pixels, labels: &labels, rows: chunk });
                        want.extend(model.probs(chunk.len()).iter().map(|v| v.to_bits()));
                    }
                    let got = Predictor::new(be, &params, capacity).predict(&pixels).unwrap();
                    let got: Vec<u32> = got.iter().flatten().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{spec} on {name}, capacity {capacity}");
                }
            }
        }
    }

    #[test]
    fn parse_appends_the_output_layer_and_checks_every_rule() {
        assert_eq!(Arch::parse("512:relu,256:tanh", 784, 26).unwrap().spec(), "512:relu,256:tanh,26:softmax");
        assert_eq!(Arch::parse(" 64:relu , 10:softmax ", 784, 10).unwrap().layers().len(), 2);
        let err = |s: &str| Arch::parse(s, 784, 10).unwrap_err().to_string();
        assert!(err("").contains("the layer list is empty"), "{}", err(""));
        assert!(err("0:relu").contains("layer 1 has 0 units"), "{}", err("0:relu"));
        assert!(err("64:gelu").contains("unknown activation `gelu`; expected one of relu"), "{}", err("64:gelu"));
        assert!(err("64").contains("has no activation"), "{}", err("64"));
        assert!(err("x:relu").contains("`x` is not a number"), "{}", err("x:relu"));
        assert!(err("10:softmax,64:relu").contains("layer 1 is softmax"), "{}", err("10:softmax,64:relu"));
        assert!(err("64:relu,12:softmax").contains("has 12 units, but the data has 10 classes"));
        let huge = Arch::parse("4000000000:relu", 784, 10).unwrap_err().to_string();
        assert!(huge.contains("more than the 4294967296 kiln can hold"), "{huge}");
        let wide = Arch::parse("64:relu,300:softmax", 784, 300).unwrap_err().to_string();
        assert!(wide.contains("at most 256 classes"), "{wide}");
        let overflow = Arch::parse("18446744073709551615:relu", 784, 10).unwrap_err().to_string();
        assert!(overflow.contains("more than 2^64"), "{overflow}");
    }

    #[test]
    fn summary_lists_layers_shapes_and_parameters_like_keras() {
        let a = Arch::parse("512:relu,256:relu", 784, 10).unwrap();
        let s = a.summary();
        assert!(s.contains("dense_1 (Dense, relu)") && s.contains("(None, 512)") && s.contains("401920"), "{s}");
        assert!(s.contains("dense_3 (Dense, softmax)") && s.contains("2570"), "{s}");
        assert!(s.contains("Total params: 535818"), "{s}");
    }

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
        let batch = Batch { pixels: &pixels, labels: &labels, rows: &rows };
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

    #[test]
    fn adding_a_layer_keeps_the_earlier_layers_initial_weights() {
        let two = Params::<f32>::glorot(&Arch::parse("64:relu", 784, 10).unwrap(), 3);
        let three = Params::<f32>::glorot(&Arch::parse("64:relu,32:relu", 784, 10).unwrap(), 3);
        assert_eq!(two.kernel(0), three.kernel(0));
        assert!(three.bias(0).iter().chain(three.bias(2)).all(|&b| b == 0.0));
    }
}
