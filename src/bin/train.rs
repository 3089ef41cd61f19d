//! `train`: trains a Sequential stack of Dense layers (the tutorial network
//! by default) on an IDX dataset (the vendored MNIST by default), reports
//! Keras-style progress, evaluates on the test split and saves the model.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use kiln::data::{self, Dataset};
use kiln::fsutil::{self, Named};
use kiln::model::{Arch, Model, Params};
use kiln::train::{self, Config, EarlyStopping, EpochReport, Progress, Samples};
use kiln_kernels::{Backend, KerasArgs, KerasArgsError, Layer1Path, Optimizer, Schedule};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Train a Sequential stack of Dense layers as Keras does.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory with the four IDX files (raw or .gz), or a Keras-style .npz archive (x_train,
    /// y_train, x_test, y_test; x uint8, float32 or float64) [default: the vendored MNIST]
    #[arg(long, value_name = "DIR|FILE.npz")]
    data: Option<PathBuf>,
    /// Where decompressed .gz files are cached [default: $KILN_CACHE_DIR, else ~/.cache/kiln]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Passes over the training set
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    epochs: usize,
    /// Images per training step
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    batch_size: usize,
    /// The layers, Keras order, comma-separated: UNITS:ACTIVATION for a Dense layer (relu, sigmoid,
    /// tanh, linear; softmax last), dropout:RATE for a Dropout of the layer below (training only); the
    /// output layer may be left out (it is then C:softmax, C the data's classes) [default: 512:relu]
    #[arg(long, value_name = "SPEC", conflicts_with = "hidden")]
    layers: Option<String>,
    /// Shorthand for --layers N:relu (one hidden layer of N units)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    hidden: Option<usize>,
    /// Start from the weights in this safetensors file (dense_K.kernel [in, out], dense_K.bias;
    /// e.g. exported from Keras) instead of Glorot-uniform
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// Train on the data in its stored order (Keras shuffle=False)
    #[arg(long)]
    no_shuffle: bool,
    /// Stop each epoch after N steps (Keras steps_per_epoch); the next epoch goes on from there
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    steps_per_epoch: Option<usize>,
    /// The optimizer, as Keras runs it: rmsprop, sgd, adam, adamw
    #[arg(long, value_name = "NAME", default_value = "rmsprop")]
    optimizer: String,
    /// Learning rate [default: 0.01 for sgd, 0.001 for the others]
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// rmsprop: decay of the squared-gradient average [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    rho: Option<f64>,
    /// sgd, rmsprop: momentum [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// sgd: Nesterov momentum
    #[arg(long)]
    nesterov: bool,
    /// rmsprop: normalise by the gradient's estimated variance
    #[arg(long)]
    centered: bool,
    /// adam, adamw: decay of the gradient average [default: 0.9]
    #[arg(long = "beta-1", allow_negative_numbers = true)]
    beta_1: Option<f64>,
    /// adam, adamw: decay of the squared-gradient average [default: 0.999]
    #[arg(long = "beta-2", allow_negative_numbers = true)]
    beta_2: Option<f64>,
    /// rmsprop, adam, adamw: epsilon [default: 1e-7]
    #[arg(long, allow_negative_numbers = true)]
    eps: Option<f64>,
    /// adamw: decoupled weight decay [default: 0.004]
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule (Keras's, from --lr): exponential:DECAY_STEPS:RATE (ExponentialDecay),
    /// cosine:DECAY_STEPS (CosineDecay, alpha 0), or constant
    #[arg(long, value_name = "SPEC", default_value = "constant")]
    lr_schedule: String,
    /// Hold out the last fraction F of the training images, before shuffling, to validate on
    /// after every epoch (Keras validation_split)
    #[arg(long, value_name = "F", conflicts_with = "validate_on_test", allow_negative_numbers = true)]
    validation_split: Option<f64>,
    /// Validate on the test split after every epoch (Keras validation_data=(x_test, y_test))
    #[arg(long)]
    validate_on_test: bool,
    /// Stop when val_loss has not improved for N epochs (Keras EarlyStopping, min_delta 0)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    early_stopping: Option<usize>,
    /// With --early-stopping: end with the weights of the epoch of the lowest val_loss
    #[arg(long, requires = "early_stopping")]
    restore_best: bool,
    /// Write everything needed to resume to PATH, atomically, after every epoch
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,
    /// Continue the run whose checkpoint is PATH (same settings; --epochs may grow)
    #[arg(long, value_name = "PATH")]
    resume: Option<PathBuf>,
    /// Seed of the initial weights, the shuffles and the Dropout masks
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// Worker threads [default: all cores]
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Kernel backend: auto, scalar, avx2, avx512, neon, blas [default: $KILN_BACKEND, else auto]
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Zero inputs (layer 1's zero pixels, the hidden layers' zero activations): auto (skipped when most are 0), dense, sparse [default: $KILN_LAYER1, else auto]
    #[arg(long, value_name = "MODE")]
    layer1: Option<String>,
    /// Where the trained model is written
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL_PATH)]
    out: PathBuf,
    /// Print only JSON lines on stdout (one per epoch, then a summary)
    #[arg(long)]
    json: bool,
    /// Also report where training time went (per phase of the step)
    #[arg(long)]
    profile: bool,
    /// Per-epoch metrics, one JSON object per line [default: next to --out, .metrics.jsonl]
    #[arg(long, value_name = "PATH")]
    metrics: Option<PathBuf>,
    /// PNG chart of loss and accuracy per epoch [default: next to --out, .training.png]
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
    /// Also write the test set's confusion matrix as a PNG heatmap
    #[arg(long, value_name = "PATH")]
    confusion: Option<PathBuf>,
    /// Also write a PNG grid of misclassified test digits (true and predicted labels)
    #[arg(long, value_name = "PATH")]
    errors: Option<PathBuf>,
    /// Also export the trained model to ONNX (as the `export` binary does)
    #[arg(long, value_name = "PATH")]
    onnx: Option<PathBuf>,
}

/// `out` with its extension replaced by `suffix` (e.g. `.metrics.jsonl`).
fn beside(out: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "kiln".into());
    out.with_file_name(format!("{stem}{suffix}"))
}

/// Where the side outputs of a run go.
struct Outputs {
    model: PathBuf,
    metrics: PathBuf,
    chart: PathBuf,
    confusion: Option<PathBuf>,
    errors: Option<PathBuf>,
    onnx: Option<PathBuf>,
    /// Their directories that do not exist yet, created when training starts.
    new_dirs: Vec<PathBuf>,
}

/// Rows a forward pass takes at once: the batch, and up to 1000 for
/// evaluation, but never more than a split holds.
fn model_capacity(cfg: &Config, data: &Dataset) -> usize {
    cfg.batch_size.max(1000).min(data.train.len().max(data.test.len()))
}

/// Before any work: no output of the run may be another output, an input
/// (the data files and their cached copies, `--init`, `--resume` unless it
/// is the checkpoint being continued), a directory or a device, and every
/// output's directory must be writable. Returns the output directories
/// that do not exist yet, which the run creates (and says so) when
/// training starts, so that a refused run writes nothing.
fn check_outputs(
    outputs: &Outputs,
    data: &Dataset,
    data_dir: &Path,
    init: &Option<PathBuf>,
    resume: &Option<PathBuf>,
    checkpoint: &Option<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut outs = vec![
        Named::new("--out", &outputs.model),
        Named::new("--metrics", &outputs.metrics),
        Named::new("--chart", &outputs.chart),
    ];
    outs.extend(outputs.confusion.as_deref().map(|p| Named::new("--confusion", p)));
    outs.extend(outputs.errors.as_deref().map(|p| Named::new("--errors", p)));
    outs.extend(outputs.onnx.as_deref().map(|p| Named::new("--onnx", p)));
    outs.extend(checkpoint.as_deref().map(|p| Named::new("--checkpoint", p)));
    let sums = data_dir.join("SHA256SUMS");
    let mut ins: Vec<Named<'_>> = data.files().map(|p| Named::new("--data", p)).collect();
    if sums.exists() {
        ins.push(Named::new("--data", &sums));
    }
    ins.extend(init.as_deref().map(|p| Named::new("--init", p)));
    if let Some(r) = resume.as_deref() {
        let continued = match checkpoint.as_deref() {
            Some(c) => fsutil::same_file(r, c)?,
            None => false,
        };
        if !continued {
            ins.push(Named::new("--resume", r));
        }
    }
    fsutil::check_outputs(&outs, &ins)
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()).map(|()| true))
}

/// The optimizer the flags ask for, with Keras's defaults for the rest; a
/// flag the optimizer does not take, or a value it cannot train with, is
/// an error naming it.
fn optimizer_from(args: &Args) -> Result<Optimizer> {
    let name = args.optimizer.as_str();
    let keras = KerasArgs {
        learning_rate: args.lr,
        rho: args.rho,
        momentum: args.momentum,
        epsilon: args.eps,
        centered: args.centered.then_some(true),
        nesterov: args.nesterov.then_some(true),
        beta_1: args.beta_1,
        beta_2: args.beta_2,
        weight_decay: args.weight_decay,
    };
    // Keras's argument names, as this command's flags.
    let flag = |arg: &str| match arg {
        "learning_rate" => "--lr".to_string(),
        "epsilon" => "--eps".to_string(),
        other => format!("--{}", other.replace('_', "-")),
    };
    Optimizer::from_keras(name, &keras).map_err(|e| match e {
        KerasArgsError::Unknown(_) => anyhow::anyhow!("--optimizer: {e}"),
        KerasArgsError::NotTaken { arg, takers, .. } => anyhow::anyhow!(
            "{} is not an argument of --optimizer {name} (it belongs to {})",
            flag(arg),
            takers.join(", ")
        ),
        KerasArgsError::Invalid(e) => anyhow::anyhow!("{} {} (--optimizer {name})", flag(e.arg()), e.problem()),
    })
}

/// What a run trains: the layers, the optimizer, the fit options.
struct Plan {
    arch: Arch,
    init: Params<f32>,
    init_from: String,
    opt: Optimizer,
    cfg: Config,
    layer1: Layer1Path,
    validation: Validation,
    schedule: Schedule,
    checkpoint: Option<PathBuf>,
    resume: Option<PathBuf>,
}

/// What a run validates on after every epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Validation {
    None,
    /// The last fraction of the training split (Keras validation_split).
    Split(f64),
    /// The test split (Keras validation_data).
    Test,
}

fn run(args: Args) -> Result<()> {
    let cfg = Config {
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        steps_per_epoch: args.steps_per_epoch,
        early_stopping: args.early_stopping.map(|patience| EarlyStopping { patience, restore_best: args.restore_best }),
        interrupt: None,
    };
    // Each field is a flag of the same name.
    cfg.validate().map_err(|e| anyhow::anyhow!("--{} {}", e.field().replace('_', "-"), e.problem()))?;
    let opt = optimizer_from(&args)?;
    let schedule = args.lr_schedule.parse::<Schedule>().map_err(|e| anyhow::anyhow!("--lr-schedule: {e}"))?;
    let validation = match (args.validation_split, args.validate_on_test) {
        (Some(f), _) => Validation::Split(f),
        (None, true) => Validation::Test,
        (None, false) => Validation::None,
    };
    ensure!(
        args.early_stopping.is_none() || validation != Validation::None,
        "--early-stopping watches val_loss: add --validation-split F or --validate-on-test"
    );
    ensure!(args.hidden != Some(0), "--hidden must be at least 1 (got 0)");
    let threads = kiln::threads_for(args.threads)?;
    let backend_name = match args.backend {
        Some(b) => b,
        None => std::env::var("KILN_BACKEND").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "auto".into()),
    };
    let be = kiln_kernels::select(&backend_name).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    let layer1 = match args.layer1 {
        Some(p) => p,
        None => std::env::var("KILN_LAYER1").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "auto".into()),
    };
    let layer1 = layer1.parse::<Layer1Path>().map_err(|e| anyhow::anyhow!("--layer1: {e}"))?;
    let data_dir = args.data.unwrap_or_else(data::default_data_dir);
    let cache = args.cache_dir.unwrap_or_else(data::default_cache_dir);
    let data = if data_dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
        Dataset::load_npz(&data_dir)?
    } else {
        Dataset::load(&data_dir, &cache)?
    };
    if args.errors.is_some() && !data.test.is_images() {
        bail!("--errors draws misclassified images, but {} holds f32 features, not images", data_dir.display());
    }
    let spec = match (&args.layers, args.hidden) {
        (Some(l), _) => l.clone(),
        (None, Some(h)) => format!("{h}:relu"),
        (None, None) => "512:relu".to_string(),
    };
    let flag = if args.layers.is_some() || args.hidden.is_none() { "--layers" } else { "--hidden" };
    // An output layer the user wrote may have classes the labels never
    // show (on purpose); one left to the data must be believable.
    let output_units = spec.rsplit(',').next().and_then(|last| {
        let (units, act) = last.split_once(':')?;
        (act.trim() == "softmax").then(|| units.trim().parse::<usize>().ok()).flatten()
    });
    let classes = match output_units {
        Some(units) if units >= data.classes() => units,
        Some(_) => data.classes(),
        None => {
            let c = data.classes();
            // The spec's own mistakes first: they are the likelier ones.
            Arch::parse(&spec, data.train.width(), c).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            data.check_classes_from_labels().map_err(|e| {
                anyhow::anyhow!("{e}; to train {c} classes, give the output layer: --layers {spec},{c}:softmax")
            })?;
            c
        }
    };
    let arch = Arch::parse(&spec, data.train.width(), classes).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    // Before anything large is allocated: a run the machine cannot hold is
    // a one-line error, not an abort mid-way.
    let need = kiln::memory::training_bytes(&arch, &opt, model_capacity(&cfg, &data));
    if let Some(room) = kiln::memory::available() {
        ensure!(
            need <= room,
            "{flag}: the layers {} ({} parameters) need at least {} to train (weights, gradients, optimizer \
             state, activations), but only {} is available",
            arch.spec(),
            arch.parameters(),
            kiln::memory::human(need),
            kiln::memory::human(room)
        );
    }
    let mut outputs = Outputs {
        metrics: args.metrics.unwrap_or_else(|| beside(&args.out, ".metrics.jsonl")),
        chart: args.chart.unwrap_or_else(|| beside(&args.out, ".training.png")),
        confusion: args.confusion,
        errors: args.errors,
        onnx: args.onnx,
        model: args.out,
        new_dirs: Vec::new(),
    };
    outputs.new_dirs = check_outputs(&outputs, &data, &data_dir, &args.init, &args.resume, &args.checkpoint)?;
    let (init, init_from) = match &args.init {
        Some(p) => (
            kiln::checkpoint::load_init(p, &arch).map_err(|e| anyhow::anyhow!("--init: {}", kiln::error_line(&e)))?,
            p.display().to_string(),
        ),
        None => (Params::glorot(&arch, cfg.seed), format!("glorot-uniform, seed {}", cfg.seed)),
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("cannot start the thread pool")?;
    let plan = Plan {
        arch,
        init,
        init_from,
        opt,
        cfg,
        layer1,
        validation,
        schedule,
        checkpoint: args.checkpoint,
        resume: args.resume,
    };
    pool.install(|| train_and_save(&plan, be, threads, &data, &outputs, args.json, args.profile))
}

fn train_and_save(
    plan: &Plan,
    be: &dyn Backend<f32>,
    threads: usize,
    data: &Dataset,
    outputs: &Outputs,
    json: bool,
    profile: bool,
) -> Result<()> {
    let Plan { arch, init, opt, cfg, layer1, validation, schedule, checkpoint, resume, .. } = plan;
    let out = outputs.model.as_path();
    let say = |line: String| if json { eprintln!("{line}") } else { kiln::outln!("{line}") };
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build and trains very slowly; use `cargo run --release --bin train`");
    }
    say(format!(
        "kiln {} | backend {} | zero inputs: --layer1 {layer1} | {threads} thread(s)",
        env!("CARGO_PKG_VERSION"),
        be.describe()
    ));
    say(format!("data: {}", data.describe()));
    say(format!("model: Sequential, --layers {}", arch.spec()));
    say(arch.summary());
    let all_train = Samples::from(&data.train);
    let (train_data, val_data) = match *validation {
        Validation::None => (all_train, None),
        Validation::Split(f) => {
            let (t, v) = all_train.validation_split(f).map_err(|e| anyhow::anyhow!("--validation-split: {e:#}"))?;
            (t, Some(v))
        }
        Validation::Test => (all_train, Some(Samples::from(&data.test))),
    };
    say(describe_run(plan, train_data.len(), val_data.as_ref().map(Samples::len)));
    let mut model = Model::new(be, init, *opt)?.with_layer1_path(*layer1).with_schedule(*schedule);
    let run = if checkpoint.is_some() || resume.is_some() {
        run_settings(plan, train_data, val_data)
    } else {
        BTreeMap::new()
    };
    let mut progress = Progress::default();
    if let Some(path) = resume {
        let r = checkpoint::load_resume(path, arch, &run)?;
        r.restore(&mut model).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        progress = r.progress;
        ensure!(
            progress.epochs_done() <= cfg.epochs,
            "--resume {}: the checkpoint has {} epochs done, more than --epochs {}; \
             give --epochs {} or more to continue it",
            path.display(),
            progress.epochs_done(),
            cfg.epochs,
            progress.epochs_done()
        );
        say(format!(
            "resumed from {}: {} epochs done, {} updates{}",
            path.display(),
            progress.epochs_done(),
            model.iterations(),
            if progress.stopped_early() { " (it had stopped early)" } else { "" }
        ));
        for r in &progress.reports {
            say(format!("Epoch {}/{} (replayed from the checkpoint)", r.epoch, cfg.epochs));
            say(epoch_line(r));
        }
    }
    for dir in &outputs.new_dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
        eprintln!("note: created the output directory {}", dir.display());
    }
    let interactive = !json && std::io::stdout().is_terminal();
    let bar: RefCell<Option<ProgressBar>> = RefCell::new(None);
    let style = ProgressStyle::with_template("{pos:>4}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise} - {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let start = Instant::now();
    let resumed_at = progress.epochs_done();
    train::fit_with(
        &mut model,
        train_data,
        val_data,
        cfg,
        &mut progress,
        |p, _| {
            if !interactive {
                return;
            }
            let mut slot = bar.borrow_mut();
            let b = slot.get_or_insert_with(|| {
                kiln::outln!("Epoch {}/{}", p.epoch, cfg.epochs);
                ProgressBar::new(p.steps as u64).with_style(style.clone())
            });
            b.set_position(p.step as u64);
            b.set_message(format!("loss: {:.4} - accuracy: {:.4}", p.loss, p.acc));
        },
        |r: &EpochReport, model: &Model<'_, f32>, progress: &Progress| {
            if let Some(b) = bar.borrow_mut().take() {
                b.finish_and_clear();
            }
            if json {
                kiln::outln!("{}", epoch_json(r));
            } else {
                if !interactive {
                    kiln::outln!("Epoch {}/{}", r.epoch, cfg.epochs);
                }
                kiln::outln!("{}", epoch_line(r));
            }
            if let Some(path) = checkpoint {
                checkpoint::save_resume(path, model, progress, &run)?;
            }
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{}; no model was written", kiln::error_line(&e)))?;
    let reports = &progress.reports;
    let st = &progress.stopping;
    if let Some(e) = st.stopped_epoch {
        say(format!(
            "Epoch {e}: early stopping (val_loss has not improved for {} epochs; the best, {:.4}, was epoch {})",
            cfg.early_stopping.map_or(0, |e| e.patience),
            st.best.unwrap_or(f64::NAN),
            st.best_epoch
        ));
    }
    if cfg.early_stopping.is_some_and(|e| e.restore_best) && st.best_weights.is_some() {
        say(format!("Restoring model weights from the end of the best epoch: {}.", st.best_epoch));
    }
    ensure!(!reports.is_empty(), "no epoch was trained");
    let train_seconds = start.elapsed().as_secs_f64();
    if profile {
        print_profile(&model, train_seconds, (reports.len() - resumed_at).max(1), json);
    }
    let eval = train::evaluate(&mut model, Samples::from(&data.test))?;
    let (test_loss, test_acc) = (eval.loss, eval.acc);
    let confusion = eval.confusion(data.test.labels());
    let meta = model_metadata(plan, be, data, (test_loss, test_acc), reports.len());
    checkpoint::save(out, &model.params(), &meta)?;
    if let Some(p) = &outputs.onnx {
        kiln::onnx::export(p, &model.params(), &Default::default())?;
    }
    write_side_outputs(outputs, reports, &eval, data)?;
    let timed = &reports[resumed_at.min(reports.len() - 1)..];
    let mean_epoch = timed.iter().map(|r| r.seconds).sum::<f64>() / timed.len() as f64;
    let summary = Summary { eval: &eval, train_seconds, mean_epoch, threads, confusion: &confusion };
    print_summary(plan, be, data, outputs, json, &summary);
    Ok(())
}

/// What a resumed run must share with the checkpoint it resumes: the
/// settings by flag, and the training and validation images' fingerprints.
fn run_settings(plan: &Plan, train_data: Samples<'_>, val_data: Option<Samples<'_>>) -> BTreeMap<String, String> {
    let Plan { init_from, opt, cfg, validation, schedule, .. } = plan;
    let mut m = BTreeMap::new();
    m.insert("--optimizer".into(), opt.describe());
    m.insert("--lr-schedule".into(), schedule.spec());
    m.insert("--batch-size".into(), cfg.batch_size.to_string());
    m.insert("--seed".into(), cfg.seed.to_string());
    m.insert("--no-shuffle".into(), (!cfg.shuffle).to_string());
    m.insert("--steps-per-epoch".into(), format!("{:?}", cfg.steps_per_epoch));
    m.insert("--init".into(), init_from.clone());
    m.insert("validation".into(), format!("{validation:?}"));
    m.insert("--early-stopping".into(), format!("{:?}", cfg.early_stopping));
    m.insert("training data".into(), train_data.fingerprint());
    if let Some(v) = &val_data {
        m.insert("validation data".into(), v.fingerprint());
    }
    m
}

/// `--profile`: the time per epoch of each phase of the step.
fn print_profile(model: &Model<'_, f32>, train_seconds: f64, epochs: usize, json: bool) {
    let phases = model.times().named();
    let data_seconds = train_seconds - phases.iter().map(|(_, s)| s).sum::<f64>();
    let epochs = epochs as f64;
    let rows = phases.iter().cloned().chain(std::iter::once(("data_and_loop".to_string(), data_seconds)));
    if json {
        let mut o = serde_json::Map::new();
        for (name, s) in rows {
            o.insert(format!("{name}_seconds_per_epoch"), json!(s / epochs));
        }
        kiln::outln!("{}", serde_json::Value::Object(o));
    } else {
        kiln::outln!("time per epoch by phase:");
        for (name, s) in rows {
            kiln::outln!("  {name:<16} {:>8.4}s  {:>5.1}%", s / epochs, 100.0 * s / train_seconds);
        }
    }
}

/// The banner's line on how the run trains: the optimizer, schedule, batch,
/// epochs, shuffling, the training and validation images, early stopping
/// and the initial weights.
fn describe_run(plan: &Plan, train_images: usize, val_images: Option<usize>) -> String {
    let Plan { init_from, opt, cfg, validation, schedule, .. } = plan;
    let steps_note = cfg.steps_per_epoch.map_or(String::new(), |n| format!(", {n} steps per epoch"));
    let val_note = match (*validation, val_images) {
        (Validation::Split(f), Some(v)) => {
            format!("; validation: the last {v} training images (--validation-split {f})")
        }
        (Validation::Test, Some(v)) => format!("; validation: the {v} test images"),
        _ => String::new(),
    };
    let stop_note = cfg.early_stopping.map_or(String::new(), |e| {
        format!(
            "; early stopping: patience {} on val_loss{}",
            e.patience,
            if e.restore_best { ", restoring the best epoch's weights" } else { "" }
        )
    });
    let schedule_note =
        if *schedule == Schedule::Constant { String::new() } else { format!(", --lr-schedule {}", schedule.spec()) };
    format!(
        "{}{schedule_note}; batch {}, {} epochs{steps_note}, {}; {train_images} training images{val_note}{stop_note}; \
         weights: {init_from}",
        opt.describe(),
        cfg.batch_size,
        cfg.epochs,
        if cfg.shuffle { format!("shuffled (seed {})", cfg.seed) } else { "not shuffled".to_string() },
    )
}

/// The model file's metadata: the run's settings and its test results.
fn model_metadata(
    plan: &Plan,
    be: &dyn Backend<f32>,
    data: &Dataset,
    (test_loss, test_acc): (f64, f64),
    epochs_trained: usize,
) -> BTreeMap<String, String> {
    let Plan { init_from, opt, cfg, validation, schedule, .. } = plan;
    let mut meta = BTreeMap::new();
    for (k, v) in [
        ("seed", cfg.seed.to_string()),
        ("epochs", cfg.epochs.to_string()),
        ("batch_size", cfg.batch_size.to_string()),
        ("shuffle", cfg.shuffle.to_string()),
        ("optimizer", opt.describe()),
        ("lr_schedule", schedule.spec()),
        ("init", init_from.clone()),
        ("image_shape", format!("{}x{}", data.train.shape().0, data.train.shape().1)),
        ("backend", be.name().to_string()),
        ("data", data.dir.display().to_string()),
        ("test_loss", test_loss.to_string()),
        ("test_acc", test_acc.to_string()),
    ] {
        meta.insert(k.to_string(), v);
    }
    if let Some(n) = cfg.steps_per_epoch {
        meta.insert("steps_per_epoch".into(), n.to_string());
    }
    match validation {
        Validation::Split(f) => drop(meta.insert("validation_split".into(), f.to_string())),
        Validation::Test => drop(meta.insert("validation".into(), "test".into())),
        Validation::None => {}
    }
    if let Some(e) = cfg.early_stopping {
        meta.insert("early_stopping".into(), format!("patience {}, restore best {}", e.patience, e.restore_best));
        meta.insert("epochs_trained".into(), epochs_trained.to_string());
    }
    meta
}

/// The metrics (JSON lines), the chart, and when asked the confusion
/// heatmap and the grid of misclassified test images.
fn write_side_outputs(
    outputs: &Outputs,
    reports: &[EpochReport],
    eval: &train::Evaluation,
    data: &Dataset,
) -> Result<()> {
    let (test_loss, test_acc) = (eval.loss, eval.acc);
    let confusion = eval.confusion(data.test.labels());
    let mut lines = String::new();
    for r in reports {
        lines.push_str(&format!("{}\n", epoch_json(r)));
    }
    lines.push_str(&format!("{}\n", json!({"test_loss": test_loss, "test_acc": test_acc, "confusion": confusion})));
    kiln::fsutil::write_atomic(&outputs.metrics, lines.as_bytes())?;
    let (losses, accs): (Vec<f64>, Vec<f64>) = reports.iter().map(|r| (r.loss, r.acc)).unzip();
    let (val_losses, val_accs): (Vec<f64>, Vec<f64>) = reports.iter().filter_map(|r| r.val_loss.zip(r.val_acc)).unzip();
    kiln::draw::training_chart(&outputs.chart, &losses, &accs, (&val_losses, &val_accs), test_acc)?;
    if let Some(p) = &outputs.confusion {
        kiln::draw::confusion_heatmap(p, &confusion)?;
    }
    if let Some(p) = &outputs.errors {
        let wrong: Vec<(&[u8], String)> = (0..data.test.len())
            .filter(|&i| eval.predicted[i] != data.test.labels()[i])
            .take(100)
            .map(|i| (data.test.image(i), format!("T{} P{}", data.test.labels()[i], eval.predicted[i])))
            .collect();
        kiln::draw::digit_grid(p, &wrong, data.test.shape(), 10)?;
    }
    Ok(())
}

/// What the final report says beside the plan.
struct Summary<'a> {
    eval: &'a train::Evaluation,
    train_seconds: f64,
    mean_epoch: f64,
    threads: usize,
    confusion: &'a [Vec<usize>],
}

/// The final report: one JSON line, or the test results, the confusion
/// matrix and where everything was written.
fn print_summary(plan: &Plan, be: &dyn Backend<f32>, data: &Dataset, outputs: &Outputs, json: bool, s: &Summary<'_>) {
    let Summary { eval, train_seconds, mean_epoch, threads, confusion } = *s;
    let (test_loss, test_acc, arch, out) = (eval.loss, eval.acc, &plan.arch, outputs.model.as_path());
    if json {
        let line = json!({"test_loss": test_loss, "test_acc": test_acc, "train_seconds": train_seconds,
                          "mean_epoch_seconds": mean_epoch, "backend": be.name(), "threads": threads,
                          "layers": arch.spec(), "model": out.display().to_string(), "confusion": confusion});
        kiln::outln!("{line}");
    } else {
        kiln::outln!("test: loss {test_loss:.4} - accuracy {test_acc:.4} ({} images)", data.test.len());
        if confusion.len() <= 20 {
            kiln::outln!("confusion matrix (rows: true class, columns: predicted):");
            kiln::outln!("      {}", (0..confusion.len()).map(|j| format!("{j:>5}")).collect::<String>());
            for (i, row) in confusion.iter().enumerate() {
                kiln::outln!("  {i:>3} {}", row.iter().map(|c| format!("{c:>5}")).collect::<String>());
            }
        } else {
            kiln::outln!("confusion matrix: {} classes, in {}", confusion.len(), outputs.metrics.display());
        }
        kiln::outln!("metrics: {}; chart: {}", outputs.metrics.display(), outputs.chart.display());
        let onnx = outputs.onnx.as_ref().map(|p| format!(", ONNX to {}", p.display())).unwrap_or_default();
        kiln::outln!(
            "trained in {train_seconds:.2}s ({mean_epoch:.3}s per epoch); model saved to {}{onnx}",
            out.display()
        );
    }
}

/// An epoch's log line, as Keras prints it.
fn epoch_line(r: &EpochReport) -> String {
    let val = match (r.val_loss, r.val_acc) {
        (Some(l), Some(a)) => format!(" - val_loss: {l:.4} - val_accuracy: {a:.4}"),
        _ => String::new(),
    };
    let steps = if r.steps == 1 { "1 step".to_string() } else { format!("{} steps", r.steps) };
    format!(
        "{steps} - {:.2}s - {:.0} images/s - loss: {:.4} - accuracy: {:.4}{val}",
        r.seconds, r.images_per_sec, r.loss, r.acc
    )
}

/// An epoch's JSON line (stdout with --json, and the metrics file).
fn epoch_json(r: &EpochReport) -> serde_json::Value {
    let mut line = json!({"epoch": r.epoch, "steps": r.steps, "loss": r.loss, "acc": r.acc, "seconds": r.seconds,
                          "images_per_sec": r.images_per_sec});
    if let (Some(l), Some(a)) = (r.val_loss, r.val_acc) {
        line["val_loss"] = json!(l);
        line["val_acc"] = json!(a);
    }
    line
}
