//! kiln: trains and runs Keras-style Sequential stacks of Dense and Dropout
//! layers on a CPU, Keras-exact, from u8 images (MNIST's by default) or f32
//! features.
//!
//! ```
//! use kiln::model::{predict, Activation, Model, Params, Sequential};
//! use kiln::train::{evaluate, fit, Config, Samples};
//! // Four 2-pixel images: class 1 when the first pixel is lit.
//! let (pixels, labels) = ([255u8, 0, 0, 255, 200, 10, 5, 220], [1u8, 0, 1, 0]);
//! let data = Samples::new(&pixels, &labels, 2).unwrap();
//! let arch = Sequential::new(2).dense(8, Activation::Relu).dense(2, Activation::Softmax).build().unwrap();
//! let be = kiln::kernels::select("auto").unwrap();
//! let mut model = Model::new(be, &Params::glorot(&arch, 1), kiln::kernels::RmsProp { lr: 0.05, ..Default::default() }).unwrap();
//! let cfg = Config { epochs: 30, batch_size: 4, ..Config::default() };
//! fit(&mut model, data, &cfg, |_| {}, |_| {}).unwrap();
//! assert_eq!(evaluate(&mut model, data).unwrap().acc, 1.0);
//! assert!(predict(be, &model.params(), &[250, 3]).unwrap()[0][1] > 0.5);
//! assert!(predict(be, &model.params(), &[250, 3, 7]).is_err()); // not whole images
//! ```
//!
//! * [`data`]: memory-mapped IDX datasets (raw or gzip, validated), and
//!   Keras-style `.npz` datasets.
//! * [`npz`]: strict `.npy` and `.npz` readers.
//! * [`onnx`]: export to ONNX, for ONNX Runtime, tract and the rest.
//! * [`model`]: the layers ([`model::Sequential`], [`model::Arch`]: Dense
//!   and Dropout), their parameters, and the model on a kernel backend,
//!   generic over `f32`/`f64`.
//! * [`train`]: Keras's `fit` (epochs, shuffling, `steps_per_epoch`),
//!   running metrics, `evaluate`, over [`train::Samples`] from memory or IDX.
//! * [`checkpoint`]: safetensors model files, written atomically and
//!   deterministically; `--init` files exported from Keras.
//! * [`preprocess`]: any image to a 28x28 MNIST-style digit.
//! * [`draw`]: PNG charts and digit pictures without system libraries.
//! * [`serve`]: the draw-a-digit page and its JSON API (axum on hyper and tokio).
//! * [`kernels`]: the kernel backends, chosen at run time for this CPU
//!   (`select("auto")`: AVX-512, else AVX2+FMA, else NEON, else scalar;
//!   BLAS when built with `--features blas` and asked for), the optimizers
//!   and the learning-rate schedules.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod draw;
pub mod idx;
pub mod model;
pub mod npz;
pub mod onnx;
pub mod preprocess;
pub mod serve;
pub mod train;

/// The kernels: backends ([`kernels::select`]), optimizers
/// ([`kernels::RmsProp`], [`kernels::Sgd`], [`kernels::Adam`]), schedules;
/// re-exported so that `kiln` is the only dependency a program needs.
pub use kiln_kernels as kernels;

// For kiln's own binaries, fuzz targets and tests, not for building on:
// hidden from the documentation, and free to change.
#[doc(hidden)]
pub mod fsutil;
#[doc(hidden)]
pub mod fuzz_checks;
#[doc(hidden)]
pub mod memory;
#[doc(hidden)]
pub mod rng;

/// README's code, compiled and run as doc tests by the test command, so
/// that the library example users copy cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Prints `args` and a newline to standard output, as `println!` does,
/// except when standard output has been closed (`train --json | head -1`,
/// a viewer that quit): `println!` would then panic in the middle of a
/// run; this says so once on standard error and prints nothing more, so
/// that the run goes on and still writes its model.
///
/// [`outln!`] is the same with `println!`'s arguments.
///
/// ```
/// kiln::stdout_line(format_args!("{} images", 60000));
/// ```
#[doc(hidden)]
pub fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static CLOSED: AtomicBool = AtomicBool::new(false);
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if !CLOSED.swap(true, Ordering::Relaxed) {
            eprintln!("note: standard output is closed ({e}); nothing more is printed there, the run goes on");
        }
    }
}

/// `println!` that survives a closed standard output: see [`stdout_line`].
///
/// ```
/// kiln::outln!("test accuracy {:.2}%", 98.04);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

/// `e` on one line: its message and its causes, joined by `: ` as
/// `{e:#}` does, but without a cause that repeats what is already said (an
/// `io::Error` or an image decoder's error often carries its own message as
/// its source too: "Is a directory (os error 21): Is a directory (os error
/// 21)").
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "disk full");
/// let e = anyhow::Error::new(io).context("m.safetensors: cannot write");
/// assert_eq!(kiln::error_line(&e), "m.safetensors: cannot write: disk full");
/// ```
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Threads per CPU above which a tool's `--threads` is refused.
const MAX_THREADS_PER_CPU: usize = 4;

#[doc(hidden)]
/// The thread count a tool runs with, from its `--threads`: every CPU when
/// not given; 0 is an error, and so is more than [`MAX_THREADS_PER_CPU`]
/// times the CPUs (every parallel region waits for its slowest thread, so
/// threads far beyond the cores only queue: 1000 on 2 cores trained ~180x
/// slower). More than the CPUs runs, with a warning on stderr.
pub fn threads_for(requested: Option<usize>) -> anyhow::Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = MAX_THREADS_PER_CPU * cpus;
    match requested {
        None => Ok(cpus),
        Some(0) => anyhow::bail!("--threads must be at least 1 (got 0)"),
        Some(n) if n > most => anyhow::bail!(
            "--threads {n}: this machine has {cpus} CPU(s), and more than {most} threads only slow the work down; \
             use at most {most} (or leave --threads out to use every CPU)"
        ),
        Some(n) => {
            if n > cpus {
                eprintln!("warning: --threads {n} on {cpus} CPU(s): threads beyond the CPUs wait for each other");
            }
            Ok(n)
        }
    }
}

#[doc(hidden)]
/// The exit of a command-line tool: success when `result` is `Ok(true)`;
/// `Ok(false)` (some inputs failed, already reported) and errors (printed
/// here on one line, `error: ...`) are failures.
pub fn exit_code(result: anyhow::Result<bool>) -> std::process::ExitCode {
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
