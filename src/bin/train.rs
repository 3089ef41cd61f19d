//! `train`: trains a Sequential stack of Dense layers (the tutorial network
//! by default) on an IDX dataset (the vendored MNIST by default), reports
//! Keras-style progress, evaluates on the test split and saves the model.

use anyhow::{ensure, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use kiln::data::{self, Dataset};
use kiln::model::{Arch, Model, Params};
use kiln::train::{self, Config, EpochReport, Samples};
use kiln_kernels::{Backend, Layer1Path, RmsProp};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Train a Sequential stack of Dense layers with RMSprop, as Keras does.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory with the four IDX files (raw or .gz) [default: the vendored MNIST]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where decompressed .gz files are cached [default: $KILN_CACHE_DIR, else ~/.cache/kiln]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Passes over the training set
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Images per training step
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// The layers, Keras order: UNITS:ACTIVATION,... (relu, sigmoid, tanh, linear; softmax last); the
    /// output layer may be left out (it is then C:softmax, C the data's classes) [default: 512:relu]
    #[arg(long, value_name = "SPEC", conflicts_with = "hidden")]
    layers: Option<String>,
    /// Shorthand for --layers N:relu (one hidden layer of N units)
    #[arg(long, value_name = "N")]
    hidden: Option<usize>,
    /// Start from the weights in this safetensors file (dense_K.kernel [in, out], dense_K.bias;
    /// e.g. exported from Keras) instead of Glorot-uniform
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// Train on the data in its stored order (Keras shuffle=False)
    #[arg(long)]
    no_shuffle: bool,
    /// Stop each epoch after N steps (Keras steps_per_epoch); the next epoch goes on from there
    #[arg(long, value_name = "N")]
    steps_per_epoch: Option<usize>,
    /// RMSprop learning rate
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    /// RMSprop decay of the squared-gradient average
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    rho: f64,
    /// RMSprop epsilon, added under the square root
    #[arg(long, default_value_t = 1e-7, allow_negative_numbers = true)]
    eps: f64,
    /// Seed of the initial weights and of the shuffles
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Kernel backend: auto, scalar, avx2, avx512, neon, blas [default: $KILN_BACKEND, else auto]
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Layer 1 on zero pixels: auto (sparse when most pixels are 0), dense, sparse [default: $KILN_LAYER1, else auto]
    #[arg(long, value_name = "PATH")]
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
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()).map(|()| true))
}

/// Rejects RMSprop settings that cannot train, naming the flag.
fn check_optimizer(opt: &RmsProp) -> Result<()> {
    let RmsProp { lr, rho, eps } = *opt;
    ensure!(lr.is_finite() && lr > 0.0, "--lr must be a positive number (got {lr})");
    ensure!(rho.is_finite() && (0.0..1.0).contains(&rho), "--rho must be in [0, 1) (got {rho})");
    ensure!(eps.is_finite() && eps > 0.0, "--eps must be a positive number (got {eps})");
    Ok(())
}

/// What a run trains: the layers, the optimizer, the fit options.
struct Plan {
    arch: Arch,
    init: Params<f32>,
    init_from: String,
    opt: RmsProp,
    cfg: Config,
    layer1: Layer1Path,
}

fn run(args: Args) -> Result<()> {
    let cfg = Config {
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        steps_per_epoch: args.steps_per_epoch,
    };
    cfg.validate()?;
    let opt = RmsProp { lr: args.lr, rho: args.rho, eps: args.eps };
    check_optimizer(&opt)?;
    ensure!(args.hidden != Some(0), "--hidden must be at least 1 (got 0)");
    let threads = match args.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1 (got 0)"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    for (flag, p) in
        [("--out", Some(&args.out)), ("--metrics", args.metrics.as_ref()), ("--chart", args.chart.as_ref())]
            .into_iter()
            .chain([("--confusion", args.confusion.as_ref()), ("--errors", args.errors.as_ref())])
    {
        if let Some(p) = p {
            ensure!(!p.is_dir(), "{flag} {}: is a directory; expected a file path", p.display());
        }
    }
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
    let data = Dataset::load(&data_dir, &cache)?;
    let spec = match (&args.layers, args.hidden) {
        (Some(l), _) => l.clone(),
        (None, Some(h)) => format!("{h}:relu"),
        (None, None) => "512:relu".to_string(),
    };
    let flag = if args.layers.is_some() || args.hidden.is_none() { "--layers" } else { "--hidden" };
    let arch = Arch::parse(&spec, data.train.width(), data.classes()).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    let (init, init_from) = match &args.init {
        Some(p) => (kiln::checkpoint::load_init(p, &arch)?, p.display().to_string()),
        None => (Params::glorot(&arch, cfg.seed), format!("glorot-uniform, seed {}", cfg.seed)),
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("cannot start the thread pool")?;
    let outputs = Outputs {
        metrics: args.metrics.unwrap_or_else(|| beside(&args.out, ".metrics.jsonl")),
        chart: args.chart.unwrap_or_else(|| beside(&args.out, ".training.png")),
        confusion: args.confusion,
        errors: args.errors,
        model: args.out,
    };
    let plan = Plan { arch, init, init_from, opt, cfg, layer1 };
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
    let Plan { arch, init, init_from, opt, cfg, layer1 } = plan;
    let out = outputs.model.as_path();
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build and trains very slowly; use `cargo run --release --bin train`");
    }
    say(format!(
        "kiln {} | backend {} | layer 1 {layer1:?} | {threads} thread(s)",
        env!("CARGO_PKG_VERSION"),
        be.describe()
    ));
    say(format!("data: {}", data.describe()));
    say(format!("model: Sequential, --layers {}", arch.spec()));
    say(arch.summary());
    let steps_note = cfg.steps_per_epoch.map_or(String::new(), |n| format!(", {n} steps per epoch"));
    say(format!(
        "RMSprop(lr={}, rho={}, eps={}); batch {}, {} epochs{steps_note}, {}; weights: {init_from}",
        opt.lr,
        opt.rho,
        opt.eps,
        cfg.batch_size,
        cfg.epochs,
        if cfg.shuffle { format!("shuffled (seed {})", cfg.seed) } else { "not shuffled".to_string() }
    ));
    let capacity = cfg.batch_size.max(1000).min(data.train.len().max(data.test.len()));
    let mut model = Model::new(be, init, *opt, capacity).with_layer1_path(*layer1);
    let interactive = !json && std::io::stdout().is_terminal();
    let bar: RefCell<Option<ProgressBar>> = RefCell::new(None);
    let style = ProgressStyle::with_template("{pos:>4}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise} - {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let start = Instant::now();
    let reports = train::fit(
        &mut model,
        Samples::from(&data.train),
        cfg,
        |p| {
            if !interactive {
                return;
            }
            let mut slot = bar.borrow_mut();
            let b = slot.get_or_insert_with(|| {
                println!("Epoch {}/{}", p.epoch, cfg.epochs);
                ProgressBar::new(p.steps as u64).with_style(style.clone())
            });
            b.set_position(p.step as u64);
            b.set_message(format!("loss: {:.4} - accuracy: {:.4}", p.loss, p.acc));
        },
        |r: &EpochReport| {
            if let Some(b) = bar.borrow_mut().take() {
                b.finish_and_clear();
            }
            if json {
                let line = json!({"epoch": r.epoch, "loss": r.loss, "acc": r.acc,
                                  "seconds": r.seconds, "images_per_sec": r.images_per_sec});
                println!("{line}");
            } else {
                if !interactive {
                    println!("Epoch {}/{}", r.epoch, cfg.epochs);
                }
                println!(
                    "{} steps - {:.2}s - {:.0} images/s - loss: {:.4} - accuracy: {:.4}",
                    r.steps, r.seconds, r.images_per_sec, r.loss, r.acc
                );
            }
        },
    )?;
    let train_seconds = start.elapsed().as_secs_f64();
    let phases = model.times().named();
    let data_seconds = train_seconds - phases.iter().map(|(_, s)| s).sum::<f64>();
    if profile {
        let epochs = cfg.epochs as f64;
        let rows = phases.iter().cloned().chain(std::iter::once(("data_and_loop".to_string(), data_seconds)));
        if json {
            let mut o = serde_json::Map::new();
            for (name, s) in rows {
                o.insert(format!("{name}_seconds_per_epoch"), json!(s / epochs));
            }
            println!("{}", serde_json::Value::Object(o));
        } else {
            println!("time per epoch by phase:");
            for (name, s) in rows {
                println!("  {name:<16} {:>8.4}s  {:>5.1}%", s / epochs, 100.0 * s / train_seconds);
            }
        }
    }
    let eval = train::evaluate(&mut model, Samples::from(&data.test))?;
    let (test_loss, test_acc) = (eval.loss, eval.acc);
    let confusion = eval.confusion(data.test.labels());
    let mut meta = BTreeMap::new();
    for (k, v) in [
        ("seed", cfg.seed.to_string()),
        ("epochs", cfg.epochs.to_string()),
        ("batch_size", cfg.batch_size.to_string()),
        ("shuffle", cfg.shuffle.to_string()),
        ("lr", opt.lr.to_string()),
        ("rho", opt.rho.to_string()),
        ("eps", opt.eps.to_string()),
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
    checkpoint::save(out, &model.params(), &meta)?;
    let mut lines = String::new();
    for r in &reports {
        let line = json!({"epoch": r.epoch, "loss": r.loss, "acc": r.acc, "seconds": r.seconds,
                          "images_per_sec": r.images_per_sec});
        lines.push_str(&format!("{line}\n"));
    }
    lines.push_str(&format!("{}\n", json!({"test_loss": test_loss, "test_acc": test_acc, "confusion": confusion})));
    kiln::fsutil::write_atomic(&outputs.metrics, lines.as_bytes())?;
    let (losses, accs): (Vec<f64>, Vec<f64>) = reports.iter().map(|r| (r.loss, r.acc)).unzip();
    kiln::draw::training_chart(&outputs.chart, &losses, &accs, test_acc)?;
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
    let mean_epoch = reports.iter().map(|r| r.seconds).sum::<f64>() / reports.len() as f64;
    if json {
        let line = json!({"test_loss": test_loss, "test_acc": test_acc, "train_seconds": train_seconds,
                          "mean_epoch_seconds": mean_epoch, "backend": be.name(), "threads": threads,
                          "layers": arch.spec(), "model": out.display().to_string(), "confusion": confusion});
        println!("{line}");
    } else {
        println!("test: loss {test_loss:.4} - accuracy {test_acc:.4} ({} images)", data.test.len());
        if confusion.len() <= 20 {
            println!("confusion matrix (rows: true class, columns: predicted):");
            println!("      {}", (0..confusion.len()).map(|j| format!("{j:>5}")).collect::<String>());
            for (i, row) in confusion.iter().enumerate() {
                println!("  {i:>3} {}", row.iter().map(|c| format!("{c:>5}")).collect::<String>());
            }
        } else {
            println!("confusion matrix: {} classes, in {}", confusion.len(), outputs.metrics.display());
        }
        println!("metrics: {}; chart: {}", outputs.metrics.display(), outputs.chart.display());
        println!("trained in {train_seconds:.2}s ({mean_epoch:.3}s per epoch); model saved to {}", out.display());
    }
    Ok(())
}
