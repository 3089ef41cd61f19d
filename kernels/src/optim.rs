//! The optimizers' maths: Keras's hyper-parameters ([`Optimizer`]), one
//! step's coefficients ([`Step`]), the fused update's operands
//! ([`Update`]), and each rule's formula, written once (`Rule::apply`,
//! generic over `Arith`): on scalars it is the reference every backend's
//! update is bit-identical to, on vector lanes the update the SIMD kernels
//! fuse into their weight-gradient products (`lanes`, and the per-rule
//! fast paths `RmsPropLanes` and `AdamLanes`, which call the same
//! functions with the rule's options as constants).
//!
//! Every formula is Keras 3's `update_step`, in f32, in its order of
//! operations (`../shared/keras-golden/README.md` writes them out), with no
//! FMA contraction, so that every backend rounds identically:
//!
//! * RMSprop: `v = rho v + (1 - rho) g^2`; centered: `a = rho a + (1 - rho)
//!   g`, `den = (v - a^2) + eps`, else `den = v + eps`; `inc = lr g /
//!   sqrt(den)`; with momentum `m = momentum m + inc; w -= m`, else `w -= inc`.
//! * SGD: with momentum `m = m momentum - g lr`, then nesterov `w += m
//!   momentum - g lr`, else `w += m`; without, `w -= g lr`.
//! * Adam: `m += (g - m)(1 - beta_1); v += (g^2 - v)(1 - beta_2); w -= m
//!   alpha / (sqrt(v) + eps)` with `alpha = lr sqrt(1 - beta_2^t) / (1 -
//!   beta_1^t)` formed once per step in f32; AdamW first decays `w -= w wd lr`.
//!
//! Constants Keras writes as Python expressions (`1 - rho`) are formed in
//! f64 and rounded once, as Python forms them before TensorFlow casts.

use crate::simd::Simd;
use crate::Real;

/// State arrays an optimizer may keep per parameter (each as long as the
/// parameters, in their layout).
pub const MAX_SLOTS: usize = 3;

/// RMSprop's hyper-parameters, Keras's names and defaults. Kept in `f64`,
/// as Keras keeps them in Python floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the squared-gradient average (default 0.9).
    pub rho: f64,
    /// Momentum of the increments (default 0: none).
    pub momentum: f64,
    /// Added under the square root (default 1e-7).
    pub eps: f64,
    /// Normalise by the gradient's estimated variance (default false).
    pub centered: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        Self { lr: 1e-3, rho: 0.9, momentum: 0.0, eps: 1e-7, centered: false }
    }
}

/// SGD's hyper-parameters, Keras's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate (default 0.01).
    pub lr: f64,
    /// Momentum (default 0: plain gradient descent).
    pub momentum: f64,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Self { lr: 0.01, momentum: 0.0, nesterov: false }
    }
}

/// Adam's hyper-parameters, Keras's names and defaults; with a weight
/// decay it is AdamW (Keras's AdamW default decay: 0.004).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the gradient average (default 0.9).
    pub beta_1: f64,
    /// Decay of the squared-gradient average (default 0.999).
    pub beta_2: f64,
    /// Added to the square root (default 1e-7).
    pub eps: f64,
    /// AdamW's decoupled weight decay; `None` for Adam.
    pub weight_decay: Option<f64>,
}

impl Default for Adam {
    fn default() -> Self {
        Self { lr: 1e-3, beta_1: 0.9, beta_2: 0.999, eps: 1e-7, weight_decay: None }
    }
}

impl Adam {
    /// Keras's AdamW defaults (Adam's, with weight decay 0.004).
    pub fn adamw() -> Self {
        Self { weight_decay: Some(0.004), ..Self::default() }
    }
}

/// One of Keras's optimizers with its hyper-parameters.
///
/// ```
/// use kiln_kernels::{Adam, Optimizer, Sgd};
/// let opt = Optimizer::Sgd(Sgd { momentum: 0.9, nesterov: true, ..Sgd::default() });
/// assert_eq!((opt.name(), opt.lr(), opt.slots()), ("sgd", 0.01, [Some("momentum"), None, None]));
/// assert_eq!(Optimizer::Adam(Adam::adamw()).name(), "adamw");
/// assert!(Optimizer::Sgd(Sgd { lr: -1.0, ..Sgd::default() }).check().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `keras.optimizers.RMSprop`.
    RmsProp(RmsProp),
    /// `keras.optimizers.SGD`.
    Sgd(Sgd),
    /// `keras.optimizers.Adam`, or `AdamW` with a weight decay.
    Adam(Adam),
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::RmsProp(RmsProp::default())
    }
}

impl From<RmsProp> for Optimizer {
    fn from(o: RmsProp) -> Self {
        Optimizer::RmsProp(o)
    }
}

impl From<Sgd> for Optimizer {
    fn from(o: Sgd) -> Self {
        Optimizer::Sgd(o)
    }
}

impl From<Adam> for Optimizer {
    fn from(o: Adam) -> Self {
        Optimizer::Adam(o)
    }
}

/// Keras's arguments of an optimizer as a caller gives them, by Keras's
/// names (`RMSprop(learning_rate=..., rho=...)`); `None` where not given,
/// which keeps the optimizer's default. The one way the CLI and the Python
/// package make an [`Optimizer`] ([`Optimizer::from_keras`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KerasArgs {
    /// `learning_rate` (every optimizer).
    pub learning_rate: Option<f64>,
    /// `rho` (RMSprop).
    pub rho: Option<f64>,
    /// `momentum` (RMSprop, SGD).
    pub momentum: Option<f64>,
    /// `epsilon` (RMSprop, Adam, AdamW).
    pub epsilon: Option<f64>,
    /// `centered` (RMSprop).
    pub centered: Option<bool>,
    /// `nesterov` (SGD).
    pub nesterov: Option<bool>,
    /// `beta_1` (Adam, AdamW).
    pub beta_1: Option<f64>,
    /// `beta_2` (Adam, AdamW).
    pub beta_2: Option<f64>,
    /// `weight_decay` (AdamW).
    pub weight_decay: Option<f64>,
}

/// One argument's value in [`KerasArgs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KerasValue {
    /// A number (`learning_rate`, `rho`, ...).
    Number(f64),
    /// A switch (`centered`, `nesterov`).
    Flag(bool),
}

impl KerasArgs {
    /// Every argument by its Keras name, with its value where given (an
    /// exhaustive destructuring: a new field does not compile until it is
    /// listed here, and then every caller reading the list has it).
    pub fn values(&self) -> [(&'static str, Option<KerasValue>); 9] {
        let KerasArgs { learning_rate, rho, momentum, epsilon, centered, nesterov, beta_1, beta_2, weight_decay } =
            *self;
        let n = |v: Option<f64>| v.map(KerasValue::Number);
        let f = |v: Option<bool>| v.map(KerasValue::Flag);
        [
            ("learning_rate", n(learning_rate)),
            ("rho", n(rho)),
            ("momentum", n(momentum)),
            ("epsilon", n(epsilon)),
            ("centered", f(centered)),
            ("nesterov", f(nesterov)),
            ("beta_1", n(beta_1)),
            ("beta_2", n(beta_2)),
            ("weight_decay", n(weight_decay)),
        ]
    }

    /// Every argument's Keras name and whether it was given.
    pub fn given(&self) -> [(&'static str, bool); 9] {
        self.values().map(|(arg, v)| (arg, v.is_some()))
    }

    /// Gives argument `arg` (Keras's name) the value `value`; an unknown
    /// argument, or a switch given a number or a number a switch, is an
    /// error saying so.
    ///
    /// ```
    /// use kiln_kernels::{KerasArgs, KerasValue};
    /// let mut a = KerasArgs::default();
    /// a.set("rho", KerasValue::Number(0.5)).unwrap();
    /// assert_eq!(a.rho, Some(0.5));
    /// assert_eq!(a.set("clipnorm", KerasValue::Number(1.0)).unwrap_err(), "unknown optimizer argument `clipnorm`");
    /// ```
    pub fn set(&mut self, arg: &str, value: KerasValue) -> Result<(), String> {
        let number = |slot: &mut Option<f64>| match value {
            KerasValue::Number(v) => {
                *slot = Some(v);
                Ok(())
            }
            KerasValue::Flag(_) => Err(format!("{arg} must be a number, not a switch")),
        };
        let flag = |slot: &mut Option<bool>| match value {
            KerasValue::Flag(v) => {
                *slot = Some(v);
                Ok(())
            }
            KerasValue::Number(_) => Err(format!("{arg} is a switch (True or False), not a number")),
        };
        match arg {
            "learning_rate" => number(&mut self.learning_rate),
            "rho" => number(&mut self.rho),
            "momentum" => number(&mut self.momentum),
            "epsilon" => number(&mut self.epsilon),
            "centered" => flag(&mut self.centered),
            "nesterov" => flag(&mut self.nesterov),
            "beta_1" => number(&mut self.beta_1),
            "beta_2" => number(&mut self.beta_2),
            "weight_decay" => number(&mut self.weight_decay),
            _ => Err(format!("unknown optimizer argument `{arg}`")),
        }
    }
}

/// Why [`Optimizer::from_keras`] made no optimizer.
#[derive(Clone, Debug, PartialEq)]
pub enum KerasArgsError {
    /// No optimizer of this name ([`Optimizer::NAMES`] lists them).
    Unknown(String),
    /// An argument given that the named optimizer does not take.
    NotTaken {
        /// The argument's Keras name.
        arg: &'static str,
        /// The optimizer it was given to.
        optimizer: &'static str,
        /// The optimizers that take it.
        takers: Vec<&'static str>,
    },
    /// A value the optimizer cannot train with.
    Invalid(ArgError),
}

impl std::fmt::Display for KerasArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KerasArgsError::Unknown(name) => {
                write!(f, "unknown optimizer `{name}`; expected one of {}", Optimizer::NAMES.join(", "))
            }
            KerasArgsError::NotTaken { arg, optimizer, takers } => {
                write!(f, "{arg} is not an argument of {optimizer} (it belongs to {})", takers.join(", "))
            }
            KerasArgsError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for KerasArgsError {}

impl Optimizer {
    /// Keras's names of the optimizers kiln has, each made by
    /// [`Optimizer::from_keras`]. A new optimizer is a new [`Optimizer`]
    /// variant (every match on it fails to compile until it has its arm),
    /// its name here and its arguments in [`Optimizer::arguments`]; the
    /// CLI, the Python package and their tests read this list.
    pub const NAMES: [&'static str; 4] = ["rmsprop", "sgd", "adam", "adamw"];

    /// The Keras arguments optimizer `name` takes (`None`: no such
    /// optimizer).
    ///
    /// ```
    /// use kiln_kernels::Optimizer;
    /// assert_eq!(Optimizer::arguments("sgd"), Some(&["learning_rate", "momentum", "nesterov"][..]));
    /// assert_eq!(Optimizer::arguments("lion"), None);
    /// ```
    pub fn arguments(name: &str) -> Option<&'static [&'static str]> {
        Some(match name {
            "rmsprop" => &["learning_rate", "rho", "momentum", "epsilon", "centered"],
            "sgd" => &["learning_rate", "momentum", "nesterov"],
            "adam" => &["learning_rate", "beta_1", "beta_2", "epsilon"],
            "adamw" => &["learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon"],
            _ => return None,
        })
    }

    /// The optimizers that take argument `arg` (Keras's name), in
    /// [`Optimizer::NAMES`] order.
    ///
    /// ```
    /// use kiln_kernels::Optimizer;
    /// assert_eq!(Optimizer::takers("epsilon"), ["rmsprop", "adam", "adamw"]);
    /// ```
    pub fn takers(arg: &str) -> Vec<&'static str> {
        Self::NAMES.into_iter().filter(|n| Self::arguments(n).is_some_and(|a| a.contains(&arg))).collect()
    }

    /// Optimizer `name` with the arguments `args` gives and Keras's
    /// defaults for the rest; an unknown name, an argument the optimizer
    /// does not take, or a value it cannot train with ([`Optimizer::check`])
    /// is an error naming it.
    ///
    /// ```
    /// use kiln_kernels::{KerasArgs, Optimizer, Sgd};
    /// let args = KerasArgs { momentum: Some(0.9), ..KerasArgs::default() };
    /// assert_eq!(Optimizer::from_keras("sgd", &args), Ok(Optimizer::Sgd(Sgd { momentum: 0.9, ..Sgd::default() })));
    /// let e = Optimizer::from_keras("adam", &args).unwrap_err();
    /// assert_eq!(e.to_string(), "momentum is not an argument of adam (it belongs to rmsprop, sgd)");
    /// ```
    pub fn from_keras(name: &str, args: &KerasArgs) -> Result<Optimizer, KerasArgsError> {
        let (name, takes) = Self::NAMES
            .iter()
            .find_map(|&n| (n == name).then(|| (n, Self::arguments(n).unwrap_or(&[]))))
            .ok_or_else(|| KerasArgsError::Unknown(name.to_string()))?;
        if let Some((arg, _)) = args.given().into_iter().find(|&(arg, given)| given && !takes.contains(&arg)) {
            return Err(KerasArgsError::NotTaken { arg, optimizer: name, takers: Self::takers(arg) });
        }
        let a = args;
        let opt = match name {
            "rmsprop" => {
                let d = RmsProp::default();
                Optimizer::RmsProp(RmsProp {
                    lr: a.learning_rate.unwrap_or(d.lr),
                    rho: a.rho.unwrap_or(d.rho),
                    momentum: a.momentum.unwrap_or(d.momentum),
                    eps: a.epsilon.unwrap_or(d.eps),
                    centered: a.centered.unwrap_or(d.centered),
                })
            }
            "sgd" => {
                let d = Sgd::default();
                Optimizer::Sgd(Sgd {
                    lr: a.learning_rate.unwrap_or(d.lr),
                    momentum: a.momentum.unwrap_or(d.momentum),
                    nesterov: a.nesterov.unwrap_or(d.nesterov),
                })
            }
            _ => {
                // adam or adamw, the two names of `Optimizer::Adam`.
                let d = if name == "adamw" { Adam::adamw() } else { Adam::default() };
                Optimizer::Adam(Adam {
                    lr: a.learning_rate.unwrap_or(d.lr),
                    beta_1: a.beta_1.unwrap_or(d.beta_1),
                    beta_2: a.beta_2.unwrap_or(d.beta_2),
                    eps: a.epsilon.unwrap_or(d.eps),
                    weight_decay: d.weight_decay.map(|wd| a.weight_decay.unwrap_or(wd)),
                })
            }
        };
        opt.check().map_err(KerasArgsError::Invalid)?;
        Ok(opt)
    }

    /// Every argument of this optimizer, by Keras's name: what
    /// [`Optimizer::from_keras`] makes it from.
    ///
    /// ```
    /// use kiln_kernels::{Optimizer, Sgd};
    /// let sgd = Optimizer::Sgd(Sgd::default());
    /// assert_eq!(Optimizer::from_keras(sgd.name(), &sgd.keras_args()), Ok(sgd));
    /// ```
    pub fn keras_args(&self) -> KerasArgs {
        let none = KerasArgs::default();
        match *self {
            Optimizer::RmsProp(o) => KerasArgs {
                learning_rate: Some(o.lr),
                rho: Some(o.rho),
                momentum: Some(o.momentum),
                epsilon: Some(o.eps),
                centered: Some(o.centered),
                ..none
            },
            Optimizer::Sgd(o) => {
                KerasArgs { learning_rate: Some(o.lr), momentum: Some(o.momentum), nesterov: Some(o.nesterov), ..none }
            }
            Optimizer::Adam(o) => KerasArgs {
                learning_rate: Some(o.lr),
                beta_1: Some(o.beta_1),
                beta_2: Some(o.beta_2),
                epsilon: Some(o.eps),
                weight_decay: o.weight_decay,
                ..none
            },
        }
    }

    /// Keras's class: `RMSprop`, `SGD`, `Adam` or `AdamW`.
    pub fn class_name(&self) -> &'static str {
        match self {
            Optimizer::RmsProp(_) => "RMSprop",
            Optimizer::Sgd(_) => "SGD",
            Optimizer::Adam(a) if a.weight_decay.is_some() => "AdamW",
            Optimizer::Adam(_) => "Adam",
        }
    }
}

impl Optimizer {
    /// Keras's name: `rmsprop`, `sgd`, `adam` or `adamw`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::RmsProp(_) => "rmsprop",
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Adam(a) if a.weight_decay.is_some() => "adamw",
            Optimizer::Adam(_) => "adam",
        }
    }

    /// The (initial) learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::RmsProp(o) => o.lr,
            Optimizer::Sgd(o) => o.lr,
            Optimizer::Adam(o) => o.lr,
        }
    }

    /// The state arrays this optimizer keeps, by position (Keras's names;
    /// `None` where the position is unused).
    pub fn slots(&self) -> [Option<&'static str>; MAX_SLOTS] {
        match self {
            Optimizer::RmsProp(o) => {
                [Some("velocity"), (o.momentum > 0.0).then_some("momentum"), o.centered.then_some("average_gradient")]
            }
            Optimizer::Sgd(o) => [(o.momentum != 0.0).then_some("momentum"), None, None],
            Optimizer::Adam(_) => [Some("momentum"), Some("velocity"), None],
        }
    }

    /// Keras's constructor call, e.g. `Adam(learning_rate=0.001, beta_1=0.9, ...)`.
    pub fn describe(&self) -> String {
        match self {
            Optimizer::RmsProp(o) => format!(
                "{}(learning_rate={}, rho={}, momentum={}, epsilon={}, centered={})",
                self.class_name(),
                o.lr,
                o.rho,
                o.momentum,
                o.eps,
                py_bool(o.centered)
            ),
            Optimizer::Sgd(o) => {
                let (class, nesterov) = (self.class_name(), py_bool(o.nesterov));
                format!("{class}(learning_rate={}, momentum={}, nesterov={nesterov})", o.lr, o.momentum)
            }
            Optimizer::Adam(o) => {
                let wd = o.weight_decay.map_or(String::new(), |wd| format!(", weight_decay={wd}"));
                format!(
                    "{}(learning_rate={}, beta_1={}, beta_2={}, epsilon={}{wd})",
                    self.class_name(),
                    o.lr,
                    o.beta_1,
                    o.beta_2,
                    o.eps
                )
            }
        }
    }

    /// Rejects hyper-parameters that cannot train, naming the argument by
    /// its Keras name ([`ArgError::arg`]: `learning_rate`, `rho`,
    /// `momentum`, `epsilon`, `nesterov`, `beta_1`, `beta_2`,
    /// `weight_decay`).
    ///
    /// ```
    /// use kiln_kernels::{Optimizer, RmsProp};
    /// let e = Optimizer::RmsProp(RmsProp { rho: 1.5, ..RmsProp::default() }).check().unwrap_err();
    /// assert_eq!((e.arg(), e.to_string().as_str()), ("rho", "rho must be in [0, 1) (got 1.5)"));
    /// ```
    pub fn check(&self) -> Result<(), ArgError> {
        fn need(ok: bool, arg: &'static str, rule: &'static str, v: f64) -> Result<(), ArgError> {
            if ok {
                Ok(())
            } else {
                Err(ArgError { arg, problem: format!("{rule} (got {v})") })
            }
        }
        let lr = self.lr();
        need(lr.is_finite() && lr > 0.0, "learning_rate", "must be a positive number", lr)?;
        let unit = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        let positive = |v: f64| v.is_finite() && v > 0.0;
        match *self {
            Optimizer::RmsProp(o) => {
                need(unit(o.rho), "rho", "must be in [0, 1)", o.rho)?;
                need(unit(o.momentum), "momentum", "must be in [0, 1)", o.momentum)?;
                need(positive(o.eps), "epsilon", "must be a positive number", o.eps)
            }
            Optimizer::Sgd(o) => {
                // Keras allows a momentum of exactly 1.
                let m = o.momentum;
                need(m.is_finite() && (0.0..=1.0).contains(&m), "momentum", "must be in [0, 1]", m)?;
                need(!o.nesterov || m > 0.0, "nesterov", "needs a momentum above 0", m)
            }
            Optimizer::Adam(o) => {
                need(unit(o.beta_1), "beta_1", "must be in [0, 1)", o.beta_1)?;
                need(unit(o.beta_2), "beta_2", "must be in [0, 1)", o.beta_2)?;
                need(positive(o.eps), "epsilon", "must be a positive number", o.eps)?;
                let wd = o.weight_decay.unwrap_or(0.0);
                need(wd.is_finite() && wd >= 0.0, "weight_decay", "must be a number >= 0", wd)
            }
        }
    }

    /// The coefficients of update number `t` (1, 2, ...; Keras's
    /// `iterations + 1`) at learning rate `lr` (the constant learning rate
    /// rounded to `T`, or a schedule's value at this step).
    pub fn step<T: Real>(&self, t: u64, lr: T) -> Step<T> {
        let f = T::from_f64;
        let rule = match *self {
            Optimizer::RmsProp(o) => Rule::RmsProp {
                lr,
                rho: f(o.rho),
                decay: f(1.0 - o.rho),
                eps: f(o.eps),
                momentum: (o.momentum > 0.0).then(|| f(o.momentum)),
                centered: o.centered,
            },
            Optimizer::Sgd(o) => {
                Rule::Sgd { lr, momentum: (o.momentum != 0.0).then(|| f(o.momentum)), nesterov: o.nesterov }
            }
            Optimizer::Adam(o) => {
                // Keras: `pow(cast(beta, f32), cast(t, f32))`, all in f32.
                let step = T::from_f64(t as f64);
                let (p1, p2) = (f(o.beta_1).powf(step), f(o.beta_2).powf(step));
                Rule::Adam {
                    alpha: lr * (T::one() - p2).sqrt() / (T::one() - p1),
                    keep_m: f(1.0 - o.beta_1),
                    keep_v: f(1.0 - o.beta_2),
                    eps: f(o.eps),
                    decay: o.weight_decay.map(|wd| (f(wd), lr)),
                }
            }
        };
        Step { rule }
    }
}

/// A learning-rate schedule, as Keras defines it (`keras.optimizers.schedules`),
/// evaluated at the optimizer's update count before each update (Keras's
/// `learning_rate(iterations)`), in f32 as Keras computes it.
///
/// ```
/// use kiln_kernels::Schedule;
/// let s = Schedule::Exponential { decay_steps: 10, rate: 0.5 };
/// assert_eq!(s.lr::<f32>(1e-3, 0), 1e-3);
/// assert_eq!(s.lr::<f32>(1e-3, 20), 1e-3 * 0.25);
/// assert_eq!(Schedule::Cosine { decay_steps: 10 }.lr::<f32>(1e-3, 10), 0.0);
/// assert_eq!("exponential:100:0.96".parse::<Schedule>().unwrap(), Schedule::Exponential { decay_steps: 100, rate: 0.96 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Schedule {
    /// The optimizer's learning rate throughout.
    #[default]
    Constant,
    /// `ExponentialDecay(lr, decay_steps, rate, staircase=False)`:
    /// `lr * rate^(step / decay_steps)`.
    Exponential {
        /// Steps per factor of `rate`.
        decay_steps: u64,
        /// The factor.
        rate: f64,
    },
    /// `CosineDecay(lr, decay_steps, alpha=0)`: `lr * 0.5 (1 + cos(pi
    /// min(step, decay_steps) / decay_steps))`.
    Cosine {
        /// Steps to decay to 0 over.
        decay_steps: u64,
    },
}

impl Schedule {
    /// The learning rate of the update after `step` updates, from the
    /// initial learning rate `initial`.
    pub fn lr<T: Real>(&self, initial: f64, step: u64) -> T {
        let f = T::from_f64;
        let lr = f(initial);
        match *self {
            Schedule::Constant => lr,
            Schedule::Exponential { decay_steps, rate } => {
                let p = f(step as f64) / f(decay_steps as f64);
                lr * f(rate).powf(p)
            }
            Schedule::Cosine { decay_steps } => {
                let steps = f(decay_steps as f64);
                let done = f(step as f64).min(steps) / steps;
                let cosine = f(0.5) * (T::one() + (f(std::f64::consts::PI) * done).cos());
                lr * cosine
            }
        }
    }

    /// As `train --lr-schedule` spells it (`constant`,
    /// `exponential:DECAY_STEPS:RATE`, `cosine:DECAY_STEPS`).
    pub fn spec(&self) -> String {
        match self {
            Schedule::Constant => "constant".into(),
            Schedule::Exponential { decay_steps, rate } => format!("exponential:{decay_steps}:{rate}"),
            Schedule::Cosine { decay_steps } => format!("cosine:{decay_steps}"),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let steps = |p: &str| -> Result<u64, String> {
            p.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{p}` is not a positive number of decay steps"))
        };
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["exponential", n, r] => {
                let rate = r.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
                let rate = rate.ok_or_else(|| format!("`{r}` is not a positive decay rate"))?;
                Ok(Schedule::Exponential { decay_steps: steps(n)?, rate })
            }
            ["cosine", n] => Ok(Schedule::Cosine { decay_steps: steps(n)? }),
            _ => Err(format!(
                "`{s}` is not a schedule; expected constant, exponential:DECAY_STEPS:RATE or cosine:DECAY_STEPS"
            )),
        }
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The coefficients of one update step, rounded to `T` as Keras rounds them
/// (see [`Optimizer::step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step<T> {
    rule: Rule<T>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule<T> {
    /// Slots: velocity, momentum (if any), average gradient (if centered).
    RmsProp { lr: T, rho: T, decay: T, eps: T, momentum: Option<T>, centered: bool },
    /// Slot: momentum (if any).
    Sgd { lr: T, momentum: Option<T>, nesterov: bool },
    /// Slots: momentum, velocity. `keep_m`, `keep_v` are `1 - beta`;
    /// `decay` is AdamW's `(wd, lr)`.
    Adam { alpha: T, keep_m: T, keep_v: T, eps: T, decay: Option<(T, T)> },
}

impl<T: Real> Step<T> {
    /// Which state slots this step reads and writes.
    pub fn uses(&self) -> [bool; MAX_SLOTS] {
        match self.rule {
            Rule::RmsProp { momentum, centered, .. } => [true, momentum.is_some(), centered],
            Rule::Sgd { momentum, .. } => [momentum.is_some(), false, false],
            Rule::Adam { .. } => [true, true, false],
        }
    }

    /// The update of parameter `i` with gradient `g`, in Keras's order.
    #[inline(always)]
    fn element(&self, w: &mut [T], s: &mut [&mut [T]; MAX_SLOTS], i: usize, g: T) {
        self.rule.apply(&mut Element { w, s, i }, g);
    }
}

/// The arithmetic of the update formulas, on one value (the scalar
/// reference, any [`Real`]) or on one vector of lanes ([`Lane`]): each
/// rule's formula is written once ([`Rule::apply`]), generic over it, so
/// that every backend rounds as the reference does by construction.
pub(crate) trait Arith: Copy {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn sqrt(self) -> Self;
}

impl<T: Real> Arith for T {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        num_traits::Float::sqrt(self)
    }
}

/// Where a rule reads and writes one parameter (or one vector of them):
/// its weight and the state slots the rule uses (the others are never
/// touched).
pub(crate) trait Cell<X> {
    fn w(&self) -> X;
    fn set_w(&mut self, x: X);
    fn s(&self, k: usize) -> X;
    fn set_s(&mut self, k: usize, x: X);
}

/// Parameter `i` of the scalar arrays.
struct Element<'c, 'a, T> {
    w: &'c mut [T],
    s: &'c mut [&'a mut [T]; MAX_SLOTS],
    i: usize,
}

impl<T: Copy> Cell<T> for Element<'_, '_, T> {
    #[inline(always)]
    fn w(&self) -> T {
        self.w[self.i]
    }
    #[inline(always)]
    fn set_w(&mut self, x: T) {
        self.w[self.i] = x;
    }
    #[inline(always)]
    fn s(&self, k: usize) -> T {
        self.s[k][self.i]
    }
    #[inline(always)]
    fn set_s(&mut self, k: usize, x: T) {
        self.s[k][self.i] = x;
    }
}

impl<X: Arith> Rule<X> {
    /// The rule's coefficients as another type (scalars into vectors).
    #[inline(always)]
    fn map<Y>(self, f: impl Fn(X) -> Y) -> Rule<Y> {
        match self {
            Rule::RmsProp { lr, rho, decay, eps, momentum, centered } => Rule::RmsProp {
                lr: f(lr),
                rho: f(rho),
                decay: f(decay),
                eps: f(eps),
                momentum: momentum.map(&f),
                centered,
            },
            Rule::Sgd { lr, momentum, nesterov } => Rule::Sgd { lr: f(lr), momentum: momentum.map(&f), nesterov },
            Rule::Adam { alpha, keep_m, keep_v, eps, decay } => Rule::Adam {
                alpha: f(alpha),
                keep_m: f(keep_m),
                keep_v: f(keep_v),
                eps: f(eps),
                decay: decay.map(|(wd, lr)| (f(wd), f(lr))),
            },
        }
    }

    /// One update of the parameter at `c` with gradient `g`: the formula
    /// of every rule, in Keras's order of operations (the module docs).
    #[inline(always)]
    fn apply(&self, c: &mut impl Cell<X>, g: X) {
        match *self {
            Rule::RmsProp { lr, rho, decay, eps, momentum, centered } => {
                let v = rmsprop_velocity(c, g, rho, decay);
                rmsprop_step(c, g, v, (lr, rho, decay, eps), momentum, centered);
            }
            Rule::Sgd { lr, momentum: Some(mu), nesterov } => {
                let m = c.s(0).mul(mu).sub(g.mul(lr));
                c.set_s(0, m);
                let step = if nesterov { m.mul(mu).sub(g.mul(lr)) } else { m };
                c.set_w(c.w().add(step));
            }
            Rule::Sgd { lr, momentum: None, .. } => c.set_w(c.w().sub(g.mul(lr))),
            Rule::Adam { alpha, keep_m, keep_v, eps, decay } => adam(c, g, (alpha, keep_m, keep_v, eps), decay),
        }
    }
}

/// RMSprop's `v := rho v + (1 - rho) g^2` on slot 0; returns the new `v`.
#[inline(always)]
fn rmsprop_velocity<X: Arith>(c: &mut impl Cell<X>, g: X, rho: X, decay: X) -> X {
    let v = rho.mul(c.s(0)).add(decay.mul(g.mul(g)));
    c.set_s(0, v);
    v
}

/// The rest of RMSprop's update once the velocity is `v`: the centered
/// average, the increment and the momentum.
#[inline(always)]
fn rmsprop_step<X: Arith>(
    c: &mut impl Cell<X>,
    g: X,
    v: X,
    (lr, rho, decay, eps): (X, X, X, X),
    momentum: Option<X>,
    centered: bool,
) {
    let den = if centered {
        let a = rho.mul(c.s(2)).add(decay.mul(g));
        c.set_s(2, a);
        v.sub(a.mul(a)).add(eps)
    } else {
        v.add(eps)
    };
    let inc = lr.mul(g).div(den.sqrt());
    let step = match momentum {
        Some(mu) => {
            let m = mu.mul(c.s(1)).add(inc);
            c.set_s(1, m);
            m
        }
        None => inc,
    };
    c.set_w(c.w().sub(step));
}

/// Adam's update, and AdamW's with its decay `(wd, lr)`.
#[inline(always)]
fn adam<X: Arith>(c: &mut impl Cell<X>, g: X, (alpha, keep_m, keep_v, eps): (X, X, X, X), decay: Option<(X, X)>) {
    let mut w = c.w();
    if let Some((wd, lr)) = decay {
        w = w.sub(w.mul(wd).mul(lr));
    }
    let (m0, v0) = (c.s(0), c.s(1));
    let m = m0.add(g.sub(m0).mul(keep_m));
    let v = v0.add(g.mul(g).sub(v0).mul(keep_v));
    c.set_s(0, m);
    c.set_s(1, v);
    c.set_w(w.sub(m.mul(alpha).div(v.sqrt().add(eps))));
}

/// A fused optimizer update: the weights whose gradient an op produces,
/// the optimizer's state arrays for them (same layout) and the step's
/// coefficients; applied in place as each part of the gradient is done.
#[derive(Debug)]
pub struct Update<'a, T> {
    w: &'a mut [T],
    state: [&'a mut [T]; MAX_SLOTS],
    step: Step<T>,
}

impl<'a, T: Real> Update<'a, T> {
    /// The update of `w` with `state` (slot `k` as long as `w` where
    /// `step.uses()[k]`, else empty) by `step`. Panics on other lengths:
    /// that is a bug in the caller.
    ///
    /// ```
    /// use kiln_kernels::{Optimizer, Sgd, Update};
    /// let opt = Optimizer::Sgd(Sgd { lr: 0.5, momentum: 0.5, nesterov: false });
    /// let (mut w, mut m) = (vec![1.0f32; 2], vec![0.0f32; 2]);
    /// let u = Update::new(&mut w, [&mut m, &mut [], &mut []], opt.step(1, 0.5));
    /// kiln_kernels::scalar::update(u, &[1.0, -2.0]);
    /// assert_eq!((w, m), (vec![0.5, 2.0], vec![-0.5, 1.0]));
    /// ```
    pub fn new(w: &'a mut [T], state: [&'a mut [T]; MAX_SLOTS], step: Step<T>) -> Self {
        for (k, (s, used)) in state.iter().zip(step.uses()).enumerate() {
            let want = if used { w.len() } else { 0 };
            assert_eq!(s.len(), want, "optimizer state slot {k}: {} values for {} weights", s.len(), w.len());
        }
        Update { w, state, step }
    }

    /// How many weights it updates.
    pub fn len(&self) -> usize {
        self.w.len()
    }

    /// Whether it updates nothing.
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// The step's coefficients.
    pub fn step(&self) -> Step<T> {
        self.step
    }

    /// Splits off the first `mid` weights (and their state).
    pub fn split_at(self, mid: usize) -> (Update<'a, T>, Update<'a, T>) {
        let (w0, w1) = self.w.split_at_mut(mid);
        let [a, b, c] = self.state.map(|s| if s.is_empty() { (&mut [][..], s) } else { s.split_at_mut(mid) });
        let (lo, hi) = ([a.0, b.0, c.0], [a.1, b.1, c.1]);
        (Update { w: w0, state: lo, step: self.step }, Update { w: w1, state: hi, step: self.step })
    }

    /// Consecutive parts of `size` weights each (the last may be shorter).
    pub fn into_chunks(self, size: usize) -> Vec<Update<'a, T>> {
        let size = size.max(1);
        let mut out = Vec::with_capacity(self.len().div_ceil(size));
        let mut rest = self;
        while rest.len() > size {
            let (head, tail) = rest.split_at(size);
            out.push(head);
            rest = tail;
        }
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }

    /// All of it, reborrowed.
    pub(crate) fn reborrow(&mut self) -> Update<'_, T> {
        let n = self.len();
        self.range(0..n)
    }

    /// The weights `r` (and their state), reborrowed.
    pub(crate) fn range(&mut self, r: std::ops::Range<usize>) -> Update<'_, T> {
        let step = self.step;
        let w = &mut self.w[r.clone()];
        let state = self.state.each_mut().map(|s| if s.is_empty() { &mut [][..] } else { &mut s[r.clone()] });
        Update { w, state, step }
    }

    /// Pointers to the weights and the state slots (dangling for unused
    /// slots, which no rule dereferences).
    pub(crate) fn ptrs(&mut self) -> Ptrs<T> {
        Ptrs { w: self.w.as_mut_ptr(), s: self.state.each_mut().map(|s| s.as_mut_ptr()) }
    }
}

/// Raw views of an [`Update`]'s arrays, for the vector kernels.
#[derive(Clone, Copy)]
pub(crate) struct Ptrs<T> {
    w: *mut T,
    s: [*mut T; MAX_SLOTS],
}

impl<T> Ptrs<T> {
    /// The same arrays from element `at` on. Unused slots' pointers only
    /// move by `wrapping_add` and are never dereferenced.
    #[inline(always)]
    pub(crate) fn at(self, at: usize) -> Self {
        Ptrs { w: self.w.wrapping_add(at), s: self.s.map(|p| p.wrapping_add(at)) }
    }
}

/// One update over `u`'s weights with gradient `g` (as long as them),
/// element by element on the calling thread: the reference formula.
pub fn update_serial<T: Real>(u: Update<'_, T>, g: &[T]) {
    assert_eq!(g.len(), u.w.len(), "gradient and weights differ in length");
    let Update { w, mut state, step } = u;
    for (i, &g) in g.iter().enumerate() {
        step.element(w, &mut state, i, g);
    }
}

/// One vector of `S`'s lanes. One exists only where the CPU runs `S`
/// ([`Lane::new`]), which is what makes its arithmetic safe to call.
#[derive(Clone, Copy)]
pub(crate) struct Lane<S: Simd>(S::V);

impl<S: Simd> Lane<S> {
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    unsafe fn new(v: S::V) -> Self {
        Lane(v)
    }

    /// `x` in every lane.
    ///
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: forwarded contract.
        Lane(unsafe { S::splat(x) })
    }

    /// `+0` in every lane (the CPU runs `S`: a `Lane<S>` exists).
    #[inline(always)]
    fn zero(self) -> Self {
        // SAFETY: self exists, so the CPU runs S.
        Lane(unsafe { S::zero() })
    }
}

impl<S: Simd> Arith for Lane<S> {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: a Lane<S> exists, so the CPU runs S (`Lane::new`).
        Lane(unsafe { S::add(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: a Lane<S> exists, so the CPU runs S (`Lane::new`).
        Lane(unsafe { S::sub(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: a Lane<S> exists, so the CPU runs S (`Lane::new`).
        Lane(unsafe { S::mul(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: a Lane<S> exists, so the CPU runs S (`Lane::new`).
        Lane(unsafe { S::div(self.0, o.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: a Lane<S> exists, so the CPU runs S (`Lane::new`).
        Lane(unsafe { S::sqrt(self.0) })
    }
}

/// `LANES` consecutive parameters at `p`, as one cell of vectors.
struct Lanes<S> {
    p: Ptrs<f32>,
    isa: std::marker::PhantomData<S>,
}

impl<S: Simd> Lanes<S> {
    /// # Safety
    /// The CPU runs `S`; `p`'s weights and the slots the rule uses are
    /// valid for `LANES` reads and writes.
    #[inline(always)]
    unsafe fn new(p: Ptrs<f32>) -> Self {
        Lanes { p, isa: std::marker::PhantomData }
    }
}

impl<S: Simd> Cell<Lane<S>> for Lanes<S> {
    #[inline(always)]
    fn w(&self) -> Lane<S> {
        // SAFETY: `Lanes::new`'s contract (a rule touches only its slots).
        Lane(unsafe { S::load(self.p.w) })
    }
    #[inline(always)]
    fn set_w(&mut self, x: Lane<S>) {
        // SAFETY: `Lanes::new`'s contract (a rule touches only its slots).
        unsafe { S::store(self.p.w, x.0) }
    }
    #[inline(always)]
    fn s(&self, k: usize) -> Lane<S> {
        // SAFETY: `Lanes::new`'s contract (a rule touches only its slots).
        Lane(unsafe { S::load(self.p.s[k]) })
    }
    #[inline(always)]
    fn set_s(&mut self, k: usize, x: Lane<S>) {
        // SAFETY: `Lanes::new`'s contract (a rule touches only its slots).
        unsafe { S::store(self.p.s[k], x.0) }
    }
}

/// A step's coefficients in registers.
#[derive(Clone, Copy)]
pub(crate) struct StepV<S: Simd> {
    rule: Rule<Lane<S>>,
    /// Whether SGD's `0 * lr` is `+0`, so that a zero gradient leaves `w`
    /// as it is (see [`lanes_no_grad`]; other rules do not use it).
    zero_step: bool,
}

impl<S: Simd> StepV<S> {
    /// # Safety
    /// The CPU runs `S`.
    #[inline(always)]
    pub(crate) unsafe fn new(step: Step<f32>) -> Self {
        let zero_step = matches!(step.rule, Rule::Sgd { lr, .. } if (0.0 * lr).to_bits() == 0);
        // SAFETY: the CPU runs S (caller).
        StepV { rule: step.rule.map(|x| unsafe { Lane::splat(x) }), zero_step }
    }
}

/// One update of `LANES` parameters at `p` with gradient `g`, with the
/// scalar reference's exact sequence of roundings (no FMA): the same
/// formula, [`Rule::apply`].
///
/// # Safety
/// The CPU runs `S`; `p`'s weights and used slots are valid for `LANES`
/// reads and writes.
#[inline(always)]
pub(crate) unsafe fn lanes<S: Simd>(c: &StepV<S>, p: Ptrs<f32>, g: S::V) {
    // SAFETY: forwarded contract.
    unsafe { c.rule.apply(&mut Lanes::<S>::new(p), Lane::new(g)) }
}

/// [`lanes`] with a gradient of `+0` in every lane, bit for bit, skipping
/// only what is exactly a no-op. This is the update of a `W1` row whose
/// pixel is dark in the whole batch (about a third of an MNIST batch's):
///
/// * SGD without momentum: `w - 0 * lr` is `w` when `0 * lr` is `+0`:
///   nothing at all to do;
/// * every other rule moves `w` (momentum, Adam's `m` and `v`, AdamW's
///   decay, a centered denominator that may not be positive): the full
///   formula runs with `g = 0`.
///
/// Plain RMSprop never comes here: [`specialise`] gives it
/// [`RmsPropLanes`], whose `apply_no_grad` skips the write of `w`.
///
/// # Safety
/// As [`lanes`].
#[inline(always)]
pub(crate) unsafe fn lanes_no_grad<S: Simd>(c: &StepV<S>, p: Ptrs<f32>) {
    // SAFETY: forwarded contract.
    unsafe {
        match c.rule {
            Rule::Sgd { momentum: None, .. } if c.zero_step => {}
            _ => lanes::<S>(c, p, S::zero()),
        }
    }
}

/// The vector update the fused kernels call per finished gradient vector,
/// as a type: the kernels are instantiated per rule ([`with_rule!`]), so
/// the common rules run without a branch on the rule or coefficients
/// reloaded from memory inside their loops. Every implementation runs the
/// formula of [`Rule::apply`] (with the rule's options as constants) and
/// rounds exactly as [`lanes`] and [`lanes_no_grad`] do (tested bit for
/// bit).
pub(crate) trait LaneRule<S: Simd>: Copy {
    /// [`lanes`].
    ///
    /// # Safety
    /// As [`lanes`].
    unsafe fn apply(&self, p: Ptrs<f32>, g: S::V);
    /// [`lanes_no_grad`].
    ///
    /// # Safety
    /// As [`lanes`].
    unsafe fn apply_no_grad(&self, p: Ptrs<f32>);
}

impl<S: Simd> LaneRule<S> for StepV<S> {
    #[inline(always)]
    unsafe fn apply(&self, p: Ptrs<f32>, g: S::V) {
        // SAFETY: forwarded contract.
        unsafe { lanes::<S>(self, p, g) }
    }
    #[inline(always)]
    unsafe fn apply_no_grad(&self, p: Ptrs<f32>) {
        // SAFETY: forwarded contract.
        unsafe { lanes_no_grad::<S>(self, p) }
    }
}

/// Plain RMSprop (no momentum, not centered): the tutorial's optimizer.
#[derive(Clone, Copy)]
pub(crate) struct RmsPropLanes<S: Simd> {
    /// `(lr, rho, decay, eps)`.
    coeffs: (Lane<S>, Lane<S>, Lane<S>, Lane<S>),
    zero_step: bool,
}

impl<S: Simd> LaneRule<S> for RmsPropLanes<S> {
    #[inline(always)]
    unsafe fn apply(&self, p: Ptrs<f32>, g: S::V) {
        let (_, rho, decay, _) = self.coeffs;
        // SAFETY: forwarded contract.
        let (c, g) = unsafe { (&mut Lanes::<S>::new(p), Lane::new(g)) };
        let v = rmsprop_velocity(c, g, rho, decay);
        rmsprop_step(c, g, v, self.coeffs, None, false);
    }
    #[inline(always)]
    unsafe fn apply_no_grad(&self, p: Ptrs<f32>) {
        let (_, rho, decay, eps) = self.coeffs;
        // SAFETY: forwarded contract.
        let c = unsafe { &mut Lanes::<S>::new(p) };
        let zero = rho.zero();
        let v = rmsprop_velocity(c, zero, rho, decay);
        // The step `lr * 0 / sqrt(v + eps)` is `+0` where `lr * 0` is
        // `+0` and `v + eps > 0`, and `w - (+0)` is `w` (also for `-0`,
        // infinities and quiet NaNs): w stays unless that may not hold.
        // SAFETY: a Lane<S> exists, so the CPU runs S.
        if !(self.zero_step && unsafe { S::all_positive(v.add(eps).0) }) {
            rmsprop_step(c, zero, v, self.coeffs, None, false);
        }
    }
}

/// Adam and AdamW.
#[derive(Clone, Copy)]
pub(crate) struct AdamLanes<S: Simd> {
    /// `(alpha, keep_m, keep_v, eps)`.
    coeffs: (Lane<S>, Lane<S>, Lane<S>, Lane<S>),
    decay: Option<(Lane<S>, Lane<S>)>,
}

impl<S: Simd> LaneRule<S> for AdamLanes<S> {
    #[inline(always)]
    unsafe fn apply(&self, p: Ptrs<f32>, g: S::V) {
        // SAFETY: forwarded contract.
        let (c, g) = unsafe { (&mut Lanes::<S>::new(p), Lane::new(g)) };
        adam(c, g, self.coeffs, self.decay);
    }
    #[inline(always)]
    unsafe fn apply_no_grad(&self, p: Ptrs<f32>) {
        // SAFETY: forwarded contract. Every Adam state moves with g = 0.
        unsafe { LaneRule::<S>::apply(self, p, S::zero()) }
    }
}

/// Which specialised [`LaneRule`] a step runs as.
pub(crate) enum Specialised<S: Simd> {
    RmsProp(RmsPropLanes<S>),
    Adam(AdamLanes<S>),
    Other(StepV<S>),
}

/// The step's coefficients in registers, in the most specialised form.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn specialise<S: Simd>(step: Step<f32>) -> Specialised<S> {
    // SAFETY: the CPU runs S (caller).
    let v = |x: f32| unsafe { Lane::<S>::splat(x) };
    match step.rule {
        Rule::RmsProp { lr, rho, decay, eps, momentum: None, centered: false } => {
            let zero_step = (lr * 0.0).to_bits() == 0;
            Specialised::RmsProp(RmsPropLanes { coeffs: (v(lr), v(rho), v(decay), v(eps)), zero_step })
        }
        Rule::Adam { alpha, keep_m, keep_v, eps, decay } => Specialised::Adam(AdamLanes {
            coeffs: (v(alpha), v(keep_m), v(keep_v), v(eps)),
            decay: decay.map(|(wd, lr)| (v(wd), v(lr))),
        }),
        // SAFETY: the CPU runs S (caller).
        _ => Specialised::Other(unsafe { StepV::new(step) }),
    }
}

/// Runs `$call` with `$u` bound to the update (an `Option<Update>`) paired
/// with its step's [`LaneRule`], instantiating the call once per
/// specialised rule (`$s` is the instruction set; the CPU must run it, and
/// the macro must be expanded inside an `unsafe` block).
macro_rules! with_rule {
    ($s:ty, $update:expr, |$u:ident| $call:expr) => {{
        let update: Option<$crate::Update<'_, f32>> = $update;
        // Expanded inside the caller's `unsafe` block, whose SAFETY covers
        // that the CPU runs $s.
        match update.as_ref().map(|u| $crate::optim::specialise::<$s>(u.step())) {
            Some($crate::optim::Specialised::RmsProp(r)) => {
                let $u = update.map(|u| (u, r));
                $call
            }
            Some($crate::optim::Specialised::Adam(r)) => {
                let $u = update.map(|u| (u, r));
                $call
            }
            Some($crate::optim::Specialised::Other(r)) => {
                let $u = update.map(|u| (u, r));
                $call
            }
            None => {
                let $u: Option<($crate::Update<'_, f32>, $crate::optim::StepV<$s>)> = None;
                $call
            }
        }
    }};
}
pub(crate) use with_rule;

/// One update over a chunk (see [`lanes`]); the tail that fills no whole
/// vector runs the scalar formula, which rounds identically.
///
/// # Safety
/// The CPU runs `S`; `g` is as long as `u`'s weights.
#[inline(always)]
pub(crate) unsafe fn update<S: Simd>(mut u: Update<'_, f32>, g: &[f32]) {
    assert_eq!(g.len(), u.len(), "gradient and weights differ in length");
    let l = S::LANES;
    let body = u.len() / l * l;
    // SAFETY: every access covers LANES floats below `body <= len` of the
    // weights, the used slots (as long, by `Update::new`) and `g`; the CPU
    // runs S (caller).
    unsafe {
        let c = StepV::<S>::new(u.step);
        let p = u.ptrs();
        for i in (0..body).step_by(l) {
            lanes::<S>(&c, p.at(i), S::load(g.as_ptr().add(i)));
        }
    }
    let n = u.len();
    update_serial(u.range(body..n), &g[body..]);
}

/// An optimizer argument that cannot train: which one (Keras's name) and
/// what is wrong with its value. Its text is `"{arg} {problem}"`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArgError {
    arg: &'static str,
    problem: String,
}

impl ArgError {
    /// The argument's Keras name (`learning_rate`, `rho`, ...).
    pub fn arg(&self) -> &'static str {
        self.arg
    }
    /// What is wrong with its value (`must be in [0, 1) (got 1.5)`).
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.arg, self.problem)
    }
}

impl std::error::Error for ArgError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid value other than every optimizer's default for argument
    /// `arg`, with the arguments it needs beside it (Nesterov needs a
    /// momentum): the args with it, and the args without it.
    fn given(arg: &str) -> (KerasArgs, KerasArgs) {
        let mut with = KerasArgs::default();
        let mut without = KerasArgs::default();
        match arg {
            "learning_rate" => with.learning_rate = Some(0.0123),
            "rho" => with.rho = Some(0.5),
            "momentum" => with.momentum = Some(0.5),
            "epsilon" => with.epsilon = Some(1e-3),
            "centered" => with.centered = Some(true),
            "nesterov" => {
                with.nesterov = Some(true);
                with.momentum = Some(0.5);
                without.momentum = Some(0.5);
            }
            "beta_1" => with.beta_1 = Some(0.5),
            "beta_2" => with.beta_2 = Some(0.5),
            "weight_decay" => with.weight_decay = Some(0.25),
            other => panic!("no test value for argument {other}: add one here"),
        }
        (with, without)
    }

    #[test]
    fn every_name_makes_its_optimizer_with_keras_defaults() {
        for name in Optimizer::NAMES {
            let opt = Optimizer::from_keras(name, &KerasArgs::default()).unwrap();
            assert_eq!(opt.name(), name);
            assert!(opt.describe().starts_with(&format!("{}(", opt.class_name())), "{name}");
            let keras_default = match name {
                "rmsprop" => Optimizer::RmsProp(RmsProp::default()),
                "sgd" => Optimizer::Sgd(Sgd::default()),
                "adam" => Optimizer::Adam(Adam::default()),
                "adamw" => Optimizer::Adam(Adam::adamw()),
                other => panic!("{other}: say here which defaults it has"),
            };
            assert_eq!(opt, keras_default, "{name}");
            // keras_args gives every argument the optimizer takes, and
            // only those, and makes the same optimizer again.
            let args = opt.keras_args();
            let given: Vec<_> = args.given().into_iter().filter(|g| g.1).map(|g| g.0).collect();
            let mut takes = Optimizer::arguments(name).unwrap().to_vec();
            takes.sort_unstable();
            let mut given = given;
            given.sort_unstable();
            assert_eq!(given, takes, "{name}");
            assert_eq!(Optimizer::from_keras(name, &args), Ok(opt));
        }
        let e = Optimizer::from_keras("lion", &KerasArgs::default()).unwrap_err();
        assert_eq!(e.to_string(), "unknown optimizer `lion`; expected one of rmsprop, sgd, adam, adamw");
    }

    #[test]
    fn each_optimizer_reads_exactly_the_arguments_it_lists() {
        let all = KerasArgs::default().given().map(|(arg, _)| arg);
        for arg in all {
            let takers: Vec<_> =
                Optimizer::NAMES.into_iter().filter(|n| Optimizer::arguments(n).unwrap().contains(&arg)).collect();
            assert!(!takers.is_empty(), "no optimizer takes {arg}");
            assert_eq!(Optimizer::takers(arg), takers, "{arg}");
            let (with, without) = given(arg);
            let alone = |mut a: KerasArgs| {
                if arg == "nesterov" {
                    a.momentum = None;
                }
                a
            };
            for name in Optimizer::NAMES {
                let takes = Optimizer::arguments(name).unwrap();
                assert!(takes.iter().all(|a| all.contains(a)), "{name} lists an argument KerasArgs lacks");
                if takes.contains(&arg) {
                    // Read: the value changes the optimizer.
                    let base = Optimizer::from_keras(name, &without).unwrap();
                    assert_ne!(Optimizer::from_keras(name, &with).unwrap(), base, "{name} ignores {arg}");
                } else {
                    let e = Optimizer::from_keras(name, &alone(with)).unwrap_err();
                    assert!(
                        matches!(&e, KerasArgsError::NotTaken { arg: a, optimizer: o, takers: t }
                            if *a == arg && *o == name && *t == takers),
                        "{name} {arg}: {e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_argument_can_be_set_by_its_name_and_only_with_its_kind() {
        for (arg, _) in KerasArgs::default().values() {
            let (with, _) = given(arg);
            let value = with.values().into_iter().find(|v| v.0 == arg).and_then(|v| v.1).unwrap();
            let mut a = KerasArgs::default();
            a.set(arg, value).unwrap();
            assert_eq!(a.values().into_iter().find(|v| v.0 == arg).unwrap().1, Some(value), "{arg}");
            let wrong = match value {
                KerasValue::Number(_) => KerasValue::Flag(true),
                KerasValue::Flag(_) => KerasValue::Number(1.0),
            };
            assert!(a.set(arg, wrong).unwrap_err().starts_with(arg), "{arg}");
        }
    }

    #[test]
    fn a_bad_value_is_an_error_naming_its_argument() {
        let args = KerasArgs { beta_2: Some(1.0), ..KerasArgs::default() };
        match Optimizer::from_keras("adamw", &args) {
            Err(KerasArgsError::Invalid(e)) => {
                assert_eq!((e.arg(), e.problem()), ("beta_2", "must be in [0, 1) (got 1)"))
            }
            other => panic!("{other:?}"),
        }
    }
}
