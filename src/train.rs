//! The training loop as Keras's `fit` runs it: epochs of (shuffled)
//! batches, Keras's running metrics, and evaluation on a held-out split.
//! Data comes as [`Samples`]: u8 image rows or f32 feature rows, and
//! labels, from memory or from a memory-mapped IDX [`Split`].

use crate::data::Split;
use crate::model::{Batch, Inputs, Model};
use crate::rng::{Rng, Stream};
use anyhow::{bail, ensure, Result};
use kiln_kernels::XentStats;
use std::time::Instant;

/// Inputs and labels to train or evaluate on: `inputs` is `(R, width)`
/// row-major, u8 pixels ([`Samples::new`]) or f32 features
/// ([`Samples::features`]), `labels` `(R)`. Borrowed, never copied.
#[derive(Clone, Copy, Debug)]
pub struct Samples<'a> {
    inputs: Inputs<'a>,
    labels: &'a [u8],
    width: usize,
    /// Names the labels (and, unless `images` says otherwise, the images) in errors.
    name: &'a str,
    images: Option<&'a str>,
}

impl<'a> Samples<'a> {
    /// `labels.len()` images of `width` pixels each, or an error when the
    /// lengths disagree.
    ///
    /// ```
    /// use kiln::train::Samples;
    /// let s = Samples::new(&[0, 255, 7, 9], &[1, 0], 2).unwrap();
    /// assert_eq!((s.len(), s.classes()), (2, 2));
    /// assert!(Samples::new(&[0, 1, 2], &[1, 0], 2).is_err());
    /// ```
    pub fn new(pixels: &'a [u8], labels: &'a [u8], width: usize) -> Result<Self> {
        Self::of(Inputs::Pixels(pixels), labels, width)
    }

    /// `labels.len()` rows of `width` f32 features each, or an error when
    /// the lengths disagree or a value is not finite. The input layer reads
    /// them as a hidden layer reads activations. (Features that are all
    /// exactly `k / 255` train to the same bits, faster, as the pixels
    /// [`crate::model::exact_pixels`] returns.)
    ///
    /// ```
    /// use kiln::train::Samples;
    /// let s = Samples::features(&[0.5, -1.0, 2.0, 0.25], &[1, 0], 2).unwrap();
    /// assert_eq!(s.len(), 2);
    /// let e = Samples::features(&[0.5, f32::NAN], &[1], 2).unwrap_err();
    /// assert!(e.to_string().contains("value 1 (row 0, column 1) is NaN"), "{e}");
    /// ```
    pub fn features(x: &'a [f32], labels: &'a [u8], width: usize) -> Result<Self> {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            bail!(
                "value {i} (row {}, column {}) is {}; features must be finite",
                i / width.max(1),
                i % width.max(1),
                x[i]
            );
        }
        Self::of(Inputs::Features(x), labels, width)
    }

    fn of(inputs: Inputs<'a>, labels: &'a [u8], width: usize) -> Result<Self> {
        ensure!(width > 0, "rows of 0 values");
        let what = if matches!(inputs, Inputs::Pixels(_)) { "pixels" } else { "values" };
        ensure!(
            inputs.len() == labels.len().saturating_mul(width),
            "{} {what} for {} labels of {width}-value rows; expected {}",
            inputs.len(),
            labels.len(),
            labels.len().saturating_mul(width)
        );
        ensure!(labels.len() <= u32::MAX as usize, "more than 2^32 rows");
        Ok(Samples { inputs, labels, width, name: "the labels", images: None })
    }

    /// The same samples, named `name` in errors (e.g. the labels file).
    pub fn named(mut self, name: &'a str) -> Self {
        self.name = name;
        self
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per row (pixels per image).
    pub fn width(&self) -> usize {
        self.width
    }

    /// All inputs, `(R, width)`.
    pub fn inputs(&self) -> Inputs<'a> {
        self.inputs
    }

    /// All labels, `(R)`.
    pub fn labels(&self) -> &'a [u8] {
        self.labels
    }

    /// The largest label plus one.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| usize::from(m) + 1)
    }

    /// Checks that these samples fit `model`: the image width is its input
    /// width and every label is below its output width.
    pub fn check_fits<T: kiln_kernels::Real>(&self, model: &Model<'_, T>) -> Result<()> {
        let arch = model.arch();
        let (rows, values) =
            if matches!(self.inputs, Inputs::Pixels(_)) { ("images", "pixels") } else { ("rows", "values") };
        ensure!(
            self.width == arch.inputs(),
            "{}: {rows} of {} {values}, but the model reads {}",
            self.images.unwrap_or(self.name),
            self.width,
            arch.inputs()
        );
        if let Some(i) = self.labels.iter().position(|&l| usize::from(l) >= arch.classes()) {
            bail!(
                "{}: label {} at index {i} is not below the output layer's width {} (the layers {})",
                self.name,
                self.labels[i],
                arch.classes(),
                arch.spec()
            );
        }
        Ok(())
    }

    /// Keras's `validation_split`: the last `fraction` of the samples, as
    /// stored (before any shuffling), held out as `(train, validation)`;
    /// the split is at `floor(R * (1 - fraction))`, as Keras computes it.
    ///
    /// ```
    /// use kiln::train::Samples;
    /// let labels = [0u8; 10];
    /// let s = Samples::new(&[0; 20], &labels, 2).unwrap();
    /// let (train, val) = s.validation_split(0.3).unwrap();
    /// assert_eq!((train.len(), val.len()), (7, 3));
    /// assert!(s.validation_split(1.0).is_err());
    /// ```
    pub fn validation_split(&self, fraction: f64) -> Result<(Samples<'a>, Samples<'a>)> {
        ensure!(
            fraction.is_finite() && fraction > 0.0 && fraction < 1.0,
            "the validation split must be a fraction in (0, 1) (got {fraction})"
        );
        let at = (self.len() as f64 * (1.0 - fraction)).floor() as usize;
        ensure!(
            at > 0 && at < self.len(),
            "{}: a validation split of {fraction} of {} images leaves {} to train on and {} to validate on; \
             both need at least one",
            self.name,
            self.len(),
            at,
            self.len() - at
        );
        let w = self.width;
        let cut = |r: std::ops::Range<usize>| Samples {
            inputs: match self.inputs {
                Inputs::Pixels(p) => Inputs::Pixels(&p[r.start * w..r.end * w]),
                Inputs::Features(x) => Inputs::Features(&x[r.start * w..r.end * w]),
            },
            labels: &self.labels[r],
            ..*self
        };
        Ok((cut(0..at), cut(at..self.len())))
    }

    /// A short digest of the samples (width, labels and inputs), to tell
    /// whether a checkpoint was made on the same data.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.width as u64).to_le_bytes());
        h.update((self.len() as u64).to_le_bytes());
        h.update(self.labels);
        match self.inputs {
            Inputs::Pixels(p) => h.update(p),
            Inputs::Features(x) => {
                h.update(b"f32");
                for chunk in x.chunks(4096) {
                    h.update(chunk.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
                }
            }
        }
        h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn batch(&self, rows: &'a [u32]) -> Batch<'a> {
        Batch { inputs: self.inputs, labels: self.labels, rows }
    }
}

impl<'a> From<&'a Split> for Samples<'a> {
    fn from(s: &'a Split) -> Self {
        let name = s.labels_path().to_str().unwrap_or("the labels file");
        let images = s.images_path().to_str();
        Samples { inputs: s.inputs(), labels: s.labels(), width: s.width(), name, images }
    }
}

/// Everything besides the model that decides what training computes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Passes over the training data (with `steps_per_epoch`, epochs of
    /// that many steps).
    pub epochs: usize,
    /// Rows per batch (the last batch of a pass may be smaller).
    pub batch_size: usize,
    /// Seed of every epoch's shuffle and of the Dropout masks ([`Model::with_seed`]).
    pub seed: u64,
    /// Shuffle before each pass (Keras `shuffle=True`); else the data's order.
    pub shuffle: bool,
    /// Keras `steps_per_epoch`: each epoch stops after this many steps and
    /// the next one goes on from the following batch (a new pass starts
    /// when one runs out), as Keras's epoch iterator does.
    pub steps_per_epoch: Option<usize>,
    /// Keras's `EarlyStopping` on `val_loss` (needs validation data).
    pub early_stopping: Option<EarlyStopping>,
    /// Asked after every step; when it returns true, `fit` stops with an
    /// error that says so, the model holding the weights of that step (for
    /// Ctrl-C in an embedding program: Python's `KeyboardInterrupt`).
    pub interrupt: Option<fn() -> bool>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            epochs: 5,
            batch_size: 128,
            seed: 1,
            shuffle: true,
            steps_per_epoch: None,
            early_stopping: None,
            interrupt: None,
        }
    }
}

/// Keras's `EarlyStopping(monitor="val_loss", min_delta=0, patience=...,
/// restore_best_weights=...)`: stop when `val_loss` has not improved for
/// `patience` epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// At the end of training, go back to the weights of the epoch with the
    /// lowest `val_loss`.
    pub restore_best: bool,
}

impl Config {
    /// Rejects settings that cannot train, with a message naming the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem: String| Err(ConfigError { field, problem });
        if self.epochs == 0 {
            return fail("epochs", "must be at least 1 (got 0)".into());
        }
        if self.batch_size == 0 {
            return fail("batch_size", "must be at least 1 (got 0)".into());
        }
        if self.batch_size > u32::MAX as usize {
            return fail("batch_size", format!("{} is too large", self.batch_size));
        }
        if self.steps_per_epoch == Some(0) {
            return fail("steps_per_epoch", "must be at least 1 (got 0)".into());
        }
        if self.early_stopping.is_some_and(|e| e.patience == 0) {
            return fail("early_stopping", "must be at least 1 epoch (got 0)".into());
        }
        Ok(())
    }
}

/// A [`Config`] field that cannot train: which field, and what is wrong
/// with its value (`Config::epochs must be at least 1 (got 0)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: String,
}

impl ConfigError {
    /// The field's name (`epochs`, `batch_size`, `steps_per_epoch`,
    /// `early_stopping`).
    pub fn field(&self) -> &'static str {
        self.field
    }
    /// What is wrong with its value.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config::{} {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Keras's per-epoch log line.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Steps in this epoch.
    pub steps: usize,
    /// Images trained on in this epoch.
    pub images: usize,
    /// Mean loss over the epoch's images, each batch measured before its update.
    pub loss: f64,
    /// Fraction of the epoch's images classified correctly, likewise.
    pub acc: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Mean loss on the validation data after the epoch, if any.
    pub val_loss: Option<f64>,
    /// Accuracy on the validation data after the epoch, if any.
    pub val_acc: Option<f64>,
}

/// Progress inside an epoch, reported after every step.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps in an epoch.
    pub steps: usize,
    /// Running mean loss of this epoch so far.
    pub loss: f64,
    /// Running accuracy of this epoch so far.
    pub acc: f64,
}

/// Running sums of loss and correct predictions over images.
#[derive(Clone, Copy, Debug, Default)]
struct Running {
    loss: f64,
    correct: usize,
    images: usize,
}

impl Running {
    fn add(&mut self, st: XentStats<f32>, images: usize) {
        self.loss += f64::from(st.loss_sum);
        self.correct += st.correct;
        self.images += images;
    }
    fn mean_loss(&self) -> f64 {
        self.loss / self.images as f64
    }
    fn acc(&self) -> f64 {
        self.correct as f64 / self.images as f64
    }
}

/// Row indices `0..n` in the seeded order of pass `epoch` (Fisher-Yates).
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..n as u32).collect();
    Rng::new(seed, Stream::Shuffle(epoch)).shuffle(&mut rows);
    rows
}

/// The batches of `order`, `batch_size` rows each (the last may be short),
/// each with the batch after it (for [`step`]'s prefetch).
pub fn batches_with_next(order: &[u32], batch_size: usize) -> impl Iterator<Item = (&[u32], Option<&[u32]>)> {
    let mut chunks = order.chunks(batch_size).peekable();
    std::iter::from_fn(move || {
        let rows = chunks.next()?;
        Some((rows, chunks.peek().copied()))
    })
}

/// One training step of `model` on `rows` of `data` (see
/// [`Model::train_step`]), with the rows of the step after it, `next`,
/// loading into the caches meanwhile: their first pass would otherwise wait
/// on memory for each random row in turn.
pub fn step(
    model: &mut Model<'_, f32>,
    data: &Samples<'_>,
    rows: &[u32],
    next: Option<&[u32]>,
) -> Result<XentStats<f32>, XentStats<f32>> {
    if let (Some(next), Inputs::Pixels(pixels)) = (next, data.inputs) {
        kiln_kernels::prefetch_rows(pixels, next, data.width);
    }
    model.train_step(data.batch(rows))
}

/// The endless sequence of batches `fit` draws from: pass after pass over
/// the data, each in its own order.
struct Passes {
    order: Vec<u32>,
    pass: u32,
    /// Start of the next batch in `order`.
    at: usize,
}

impl Passes {
    fn order(n: usize, cfg: &Config, pass: u32) -> Vec<u32> {
        if cfg.shuffle {
            epoch_order(n, cfg.seed, pass)
        } else {
            (0..n as u32).collect()
        }
    }
}

/// Where a [`fit_with`] run is, besides the model: with the model's
/// weights and optimizer state, everything needed to continue it exactly
/// (`checkpoint::save_resume` writes both).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The reports of the epochs done so far.
    pub reports: Vec<EpochReport>,
    /// The pass over the data the next batch comes from (its shuffle).
    pub pass: u32,
    /// Where in that pass the next batch starts.
    pub at: usize,
    /// Early stopping's state.
    pub stopping: Stopping,
}

/// Early stopping's state (Keras's `EarlyStopping` attributes).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stopping {
    /// The lowest `val_loss` so far.
    pub best: Option<f64>,
    /// The 1-based epoch it was reached in (Keras: `best_epoch + 1`).
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub wait: usize,
    /// The epoch after which training stopped early, if it did.
    pub stopped_epoch: Option<usize>,
    /// With `restore_best`, the weights of the best epoch (row-major values).
    #[serde(skip)]
    pub best_weights: Option<crate::model::Params<f32>>,
}

impl Progress {
    /// Epochs done so far.
    pub fn epochs_done(&self) -> usize {
        self.reports.len()
    }

    /// Whether early stopping ended the run.
    pub fn stopped_early(&self) -> bool {
        self.stopping.stopped_epoch.is_some()
    }
}

/// Trains `model` on `data` for `cfg.epochs` epochs, calling `on_step` after
/// every step and `on_epoch` after every epoch. Stops with an error naming
/// the epoch, step and rows when a batch's loss is not finite; the model's
/// weights are then those before that step.
pub fn fit(
    model: &mut Model<'_, f32>,
    data: Samples<'_>,
    cfg: &Config,
    mut on_step: impl FnMut(StepProgress),
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    let mut progress = Progress::default();
    fit_with(
        model,
        data,
        None,
        cfg,
        &mut progress,
        |p, _| on_step(p),
        |r, _, _| {
            on_epoch(r);
            Ok(())
        },
    )?;
    Ok(progress.reports)
}

/// [`fit`] with Keras's other `fit` options: `validation` data evaluated
/// after every epoch (Keras's `validation_data`, or the held-out part of
/// [`Samples::validation_split`]), early stopping on its loss
/// ([`Config::early_stopping`]), and a start from `progress` (a fresh
/// [`Progress::default`], or one saved with the model's state to resume a
/// run exactly). `on_step` sees each step's progress and the model after
/// that step; `on_epoch` sees each epoch's report, the model and the
/// progress after it (to save a checkpoint); an error from it stops
/// training. With `restore_best`, the best epoch's weights are put back at
/// the end of the call, as Keras's `on_train_end` does (so a run resumed
/// exactly starts from what `on_epoch` saved, not from a model restored
/// that way).
///
/// ```
/// use kiln::model::{Activation, Model, Params, Sequential};
/// use kiln::train::{fit_with, Config, EarlyStopping, Progress, Samples};
/// use kiln_kernels::Adam;
/// let pixels: Vec<u8> = (0..400).map(|i| (i * 97 % 256) as u8).collect();
/// let labels: Vec<u8> = (0..100).map(|i| (i % 3) as u8).collect();
/// let (train, val) = Samples::new(&pixels, &labels, 4).unwrap().validation_split(0.2).unwrap();
/// assert_eq!((train.len(), val.len()), (80, 20));
/// let arch = Sequential::new(4).dense(16, Activation::Tanh).dense(3, Activation::Softmax).build().unwrap();
/// let be = kiln_kernels::select("auto").unwrap();
/// let init = Params::glorot(&arch, 1);
/// let stop = Some(EarlyStopping { patience: 2, restore_best: false });
/// let cfg = |epochs| Config { epochs, batch_size: 16, early_stopping: stop, ..Config::default() };
/// // Four epochs in one go ...
/// let mut whole = Model::new(be, &init, Adam::default()).unwrap();
/// let mut p = Progress::default();
/// fit_with(&mut whole, train, Some(val), &cfg(4), &mut p, |_, _| {}, |_, _, _| Ok(())).unwrap();
/// assert!(p.reports.iter().all(|r| r.val_loss.is_some()));
/// // ... or two, then two more from where they stopped: the same weights.
/// let mut split = Model::new(be, &init, Adam::default()).unwrap();
/// let mut q = Progress::default();
/// fit_with(&mut split, train, Some(val), &cfg(2), &mut q, |_, _| {}, |_, _, _| Ok(())).unwrap();
/// fit_with(&mut split, train, Some(val), &cfg(4), &mut q, |_, _| {}, |_, _, _| Ok(())).unwrap();
/// assert_eq!(whole.params(), split.params());
/// ```
pub fn fit_with(
    model: &mut Model<'_, f32>,
    data: Samples<'_>,
    validation: Option<Samples<'_>>,
    cfg: &Config,
    progress: &mut Progress,
    mut on_step: impl FnMut(StepProgress, &Model<'_, f32>),
    mut on_epoch: impl FnMut(&EpochReport, &Model<'_, f32>, &Progress) -> Result<()>,
) -> Result<()> {
    cfg.validate()?;
    ensure!(!data.is_empty(), "{}: no images to train on", data.name);
    data.check_fits(model)?;
    if let Some(v) = &validation {
        v.check_fits(model)?;
    }
    ensure!(
        cfg.early_stopping.is_none() || validation.is_some(),
        "early stopping watches val_loss and needs validation data (fit_with's `validation`)"
    );
    model.set_seed(cfg.seed);
    let n = data.len();
    // The activations for this fit's batches from the start, so that the
    // evaluations' chunks (`evaluate`) are the same whether or not an epoch
    // runs here (a resumed run may have none left).
    model.reserve(cfg.batch_size.min(n));
    // Features that are mostly one value per column train as sparse ones.
    model.shift_features(data.inputs());
    ensure!(progress.at <= n, "the progress is {} images into a pass over {n}", progress.at);
    let per_pass = n.div_ceil(cfg.batch_size);
    let steps = cfg.steps_per_epoch.unwrap_or(per_pass);
    let mut passes = Passes { order: Passes::order(n, cfg, progress.pass), pass: progress.pass, at: progress.at };
    while progress.epochs_done() < cfg.epochs && !progress.stopped_early() {
        let e = progress.epochs_done();
        let start = Instant::now();
        let mut run = Running::default();
        for s in 0..steps {
            if passes.at >= n {
                passes.pass += 1;
                passes.order = Passes::order(n, cfg, passes.pass);
                passes.at = 0;
            }
            let (at, order) = (passes.at, &passes.order);
            let rows = &order[at..(at + cfg.batch_size).min(n)];
            let following = &order[(at + cfg.batch_size).min(n)..];
            let next =
                (!following.is_empty() && s + 1 < steps).then(|| &following[..following.len().min(cfg.batch_size)]);
            match step(model, &data, rows, next) {
                Ok(st) => run.add(st, rows.len()),
                Err(st) => bail!(
                    "the loss became {} at epoch {}, step {}/{steps} (batch of {} images, first rows {:?}); \
                     training stopped (hint: a lower learning rate)",
                    st.loss_sum / rows.len() as f32,
                    e + 1,
                    s + 1,
                    rows.len(),
                    &rows[..rows.len().min(4)]
                ),
            }
            passes.at += rows.len();
            on_step(StepProgress { epoch: e + 1, step: s + 1, steps, loss: run.mean_loss(), acc: run.acc() }, model);
            if cfg.interrupt.is_some_and(|stop| stop()) {
                bail!("interrupted at epoch {}, step {}/{steps}", e + 1, s + 1);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let val = match validation {
            Some(v) => Some(evaluate(model, v)?),
            None => None,
        };
        let report = EpochReport {
            epoch: e + 1,
            steps,
            images: run.images,
            loss: run.mean_loss(),
            acc: run.acc(),
            seconds,
            images_per_sec: run.images as f64 / seconds,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.acc),
        };
        if let (Some(es), Some(val_loss)) = (cfg.early_stopping, report.val_loss) {
            progress.stopping.observe(es, e + 1, val_loss, || model.params());
        }
        (progress.pass, progress.at) = (passes.pass, passes.at);
        progress.reports.push(report);
        on_epoch(&report, model, progress)?;
    }
    if let (Some(EarlyStopping { restore_best: true, .. }), Some(best)) =
        (cfg.early_stopping, &progress.stopping.best_weights)
    {
        model.set_params(best);
    }
    Ok(())
}

impl Stopping {
    /// Keras's `EarlyStopping.on_epoch_end` for the 1-based `epoch` that
    /// ended with `val_loss` (min_delta 0: any decrease is an improvement).
    fn observe(
        &mut self,
        es: EarlyStopping,
        epoch: usize,
        val_loss: f64,
        weights: impl Fn() -> crate::model::Params<f32>,
    ) {
        if es.restore_best && self.best_weights.is_none() {
            self.best_weights = Some(weights());
            self.best_epoch = epoch;
        }
        self.wait += 1;
        if self.best.is_none_or(|best| val_loss < best) {
            self.best = Some(val_loss);
            self.best_epoch = epoch;
            if es.restore_best {
                self.best_weights = Some(weights());
            }
            self.wait = 0;
            return;
        }
        // Keras's `epoch > 0`: never after the first epoch.
        if self.wait >= es.patience && epoch > 1 {
            self.stopped_epoch = Some(epoch);
        }
    }
}

/// What [`evaluate`] measures on a split.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean clipped cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub acc: f64,
    /// The predicted class of every image, in order.
    pub predicted: Vec<u8>,
    /// The number of classes.
    pub classes: usize,
}

impl Evaluation {
    /// `m[true][predicted]` counts, `C x C`.
    pub fn confusion(&self, labels: &[u8]) -> Vec<Vec<usize>> {
        let mut m = vec![vec![0usize; self.classes]; self.classes];
        for (&t, &p) in labels.iter().zip(&self.predicted) {
            m[usize::from(t)][usize::from(p)] += 1;
        }
        m
    }
}

/// Rows [`evaluate`] runs at once, at least.
pub const EVAL_ROWS: usize = 1000;

/// Loss, accuracy and predictions of `model` on all of `data`, in order, in
/// chunks of [`EVAL_ROWS`] rows, or of [`Model::batch_capacity`] when
/// larger (after `fit`: its batch size); an error when the data does not
/// fit the model ([`Samples::check_fits`]).
pub fn evaluate(model: &mut Model<'_, f32>, data: Samples<'_>) -> Result<Evaluation> {
    data.check_fits(model)?;
    let rows: Vec<u32> = (0..data.len() as u32).collect();
    let classes = model.arch().classes();
    let mut run = Running::default();
    let mut predicted = Vec::with_capacity(data.len());
    // The rows evaluated at once: `EVAL_ROWS`, or the training batch when
    // larger (the loss is summed a chunk at a time, so this fixes its bits).
    for chunk in rows.chunks(model.batch_capacity().max(EVAL_ROWS)) {
        let st = model.forward(data.batch(chunk));
        run.add(st, chunk.len());
        predicted.extend(model.probs(chunk.len()).chunks_exact(classes).map(|p| kiln_kernels::argmax(p) as u8));
    }
    Ok(Evaluation { loss: run.mean_loss(), acc: run.acc(), predicted, classes })
}

#[cfg(test)]
mod tests {
    use super::{batches_with_next, evaluate, fit, Config, EarlyStopping, Samples, Stopping};
    use crate::model::{Arch, Model, Params};

    #[test]
    fn samples_that_do_not_fit_the_model_are_errors_naming_them() {
        let be = kiln_kernels::select("scalar").unwrap();
        let arch = Arch::parse("4:relu", 2, 3).unwrap();
        let mut model = Model::new(be, &Params::glorot(&arch, 1), kiln_kernels::Optimizer::default()).unwrap();
        let labels = [0u8, 5, 1];
        let s = Samples::new(&[1, 2, 3, 4, 5, 6], &labels, 2).unwrap().named("labels.idx");
        let e = evaluate(&mut model, s).unwrap_err().to_string();
        assert!(e.contains("labels.idx: label 5 at index 1 is not below the output layer's width 3"), "{e}");
        let e = fit(&mut model, s, &Config::default(), |_| {}, |_| {}).unwrap_err().to_string();
        assert!(e.contains("labels.idx: label 5"), "{e}");
        let wide = Samples::new(&[0; 9], &[0, 1, 2], 3).unwrap().named("images.idx");
        let e = evaluate(&mut model, wide).unwrap_err().to_string();
        assert!(e.contains("images.idx: images of 3 pixels, but the model reads 2"), "{e}");
        let e = fit(&mut model, s, &Config { steps_per_epoch: Some(0), ..Config::default() }, |_| {}, |_| {});
        assert!(e.unwrap_err().to_string().contains("Config::steps_per_epoch must be at least 1"));
        // Any batch size fits: the model's activations grow to it, once.
        let good = Samples::new(&[0; 40], &[0; 20], 2).unwrap();
        fit(&mut model, good, &Config { batch_size: 16, epochs: 1, ..Config::default() }, |_| {}, |_| {}).unwrap();
        assert_eq!(model.batch_capacity(), 16);
    }

    #[test]
    fn an_interrupt_stops_fit_after_the_step_that_saw_it() {
        let be = kiln_kernels::select("scalar").unwrap();
        let arch = Arch::parse("3:relu", 2, 2).unwrap();
        let init = Params::glorot(&arch, 1);
        let mut model = Model::new(be, &init, kiln_kernels::Optimizer::default()).unwrap();
        let s = Samples::new(&[0, 255, 255, 0, 9, 9, 200, 1], &[0, 1, 0, 1], 2).unwrap();
        let cfg = Config { batch_size: 1, interrupt: Some(|| true), ..Config::default() };
        let e = fit(&mut model, s, &cfg, |_| {}, |_| {}).unwrap_err().to_string();
        assert!(e.contains("interrupted at epoch 1, step 1/4"), "{e}");
        assert_eq!(model.iterations(), 1, "the step that saw the interrupt was applied, no other");
        assert_ne!(model.params(), init);
    }

    #[test]
    fn steps_per_epoch_continues_where_the_last_epoch_stopped() {
        // 10 images of batch 4: passes of 3 steps (4, 4, 2 images); epochs
        // of 2 steps take 8, then 2 + 4 (a new pass), then 4 + 2 images.
        let be = kiln_kernels::select("scalar").unwrap();
        let arch = Arch::parse("3:relu", 2, 2).unwrap();
        let mut model = Model::new(be, &Params::glorot(&arch, 1), kiln_kernels::Optimizer::default()).unwrap();
        let pixels: Vec<u8> = (0..20).collect();
        let labels: Vec<u8> = (0..10).map(|i| i % 2).collect();
        let s = Samples::new(&pixels, &labels, 2).unwrap();
        let cfg = Config { epochs: 3, batch_size: 4, steps_per_epoch: Some(2), shuffle: false, ..Config::default() };
        let reports = fit(&mut model, s, &cfg, |_| {}, |_| {}).unwrap();
        assert!(reports.iter().all(|r| r.steps == 2));
        assert_eq!(reports.iter().map(|r| r.images).collect::<Vec<_>>(), [8, 6, 6]);
    }

    #[test]
    fn early_stopping_counts_epochs_as_keras_does() {
        // Keras: wait resets on any decrease; stop once wait >= patience.
        let arch = Arch::parse("2:relu", 2, 2).unwrap();
        let es = EarlyStopping { patience: 2, restore_best: true };
        let mut st = Stopping::default();
        let mut stopped_after = None;
        for (e, loss) in [1.0, 0.8, 0.9, 0.8, 0.95, 0.5].into_iter().enumerate() {
            st.observe(es, e + 1, loss, || Params::glorot(&arch, e as u64));
            if st.stopped_epoch.is_some() {
                stopped_after = Some(e + 1);
                break;
            }
        }
        // 0.8 again at epoch 4 is no improvement (min_delta 0, strict).
        assert_eq!((stopped_after, st.best, st.best_epoch, st.wait), (Some(4), Some(0.8), 2, 2));
        assert_eq!(st.best_weights, Some(Params::glorot(&arch, 1)), "the weights of epoch 2");
    }

    #[test]
    fn restore_best_ends_with_the_best_epochs_weights() {
        // Validation labels unrelated to the images: val_loss soon rises.
        let be = kiln_kernels::select("scalar").unwrap();
        let arch = Arch::parse("16:relu", 4, 2).unwrap();
        let pixels: Vec<u8> = (0..480).map(|i| (i * 53 % 256) as u8).collect();
        let labels: Vec<u8> =
            (0..120).map(|i| if i < 100 { u8::from(pixels[i * 4] > 127) } else { (i % 2) as u8 }).collect();
        let (train, val) = Samples::new(&pixels, &labels, 4).unwrap().validation_split(1.0 / 6.0).unwrap();
        let opt = kiln_kernels::RmsProp { lr: 0.05, ..Default::default() };
        let mut model = Model::new(be, &Params::glorot(&arch, 1), opt).unwrap();
        let es = Some(EarlyStopping { patience: 3, restore_best: true });
        let cfg = Config { epochs: 40, batch_size: 20, early_stopping: es, ..Config::default() };
        let mut progress = super::Progress::default();
        let mut seen = Vec::new();
        super::fit_with(
            &mut model,
            train,
            Some(val),
            &cfg,
            &mut progress,
            |_, _| {},
            |r, m, _| {
                seen.push((r.val_loss.unwrap(), m.params()));
                Ok(())
            },
        )
        .unwrap();
        let stopped = progress.stopping.stopped_epoch.expect("val_loss rose: training stopped early");
        assert!(stopped < 40 && seen.len() == stopped);
        let best = (0..seen.len()).min_by(|&a, &b| seen[a].0.total_cmp(&seen[b].0)).unwrap();
        assert_eq!(progress.stopping.best_epoch, best + 1);
        assert_eq!(stopped, best + 1 + 3, "three epochs without improvement after the best");
        assert_eq!(model.params(), seen[best].1, "the model holds the best epoch's weights");
        assert_ne!(model.params(), seen[seen.len() - 1].1);
    }

    #[test]
    fn batches_with_next_pairs_each_batch_with_the_following_one() {
        let order: Vec<u32> = (0..7).collect();
        let got: Vec<_> = batches_with_next(&order, 3).collect();
        let want: Vec<(&[u32], Option<&[u32]>)> =
            vec![(&[0, 1, 2], Some(&[3, 4, 5])), (&[3, 4, 5], Some(&[6])), (&[6], None)];
        assert_eq!(got, want);
        assert_eq!(batches_with_next(&[], 3).count(), 0);
    }
}
