//! `kiln._kiln`: the Rust module under the `kiln` Python package. It holds
//! a network (`Network`: the `kiln` crate's `Model` on the best backend for
//! this CPU) and runs the crate's own `fit`, `evaluate` and `predict` with
//! the GIL released; the Keras-shaped surface (layers, `compile`, argument
//! checking, label encodings) is the pure-Python package around it. Nothing
//! here computes anything the crate does not.

use kiln::checkpoint::OptimizerState;
use kiln::model::{exact_pixels, Arch, Inputs, Model, Params};
use kiln::train::{self, Config, Samples};
use kiln_kernels::{KerasArgs, KerasValue, Optimizer};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What stops one `fit`: set by the thread that called `fit` when a
/// Python signal handler raised (Ctrl-C), or by the training thread when a
/// per-batch callback raised; the exception is raised again when `fit`
/// returns.
#[derive(Default)]
struct Stop {
    now: AtomicBool,
    pending: Mutex<Option<PyErr>>,
}

impl Stop {
    fn raise(&self, e: PyErr) {
        if let Ok(mut p) = self.pending.lock() {
            p.get_or_insert(e);
        }
        self.now.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    /// The `Stop` of the `fit` this thread trains (its loop runs on one
    /// pool thread), for `interrupted`, which cannot capture it.
    static CURRENT: std::cell::RefCell<Option<Arc<Stop>>> = const { std::cell::RefCell::new(None) };
}

/// `fit`'s interrupt check, after every step.
fn interrupted() -> bool {
    CURRENT.with_borrow(|s| s.as_ref().is_some_and(|s| s.now.load(Ordering::Relaxed)))
}

/// The thread count `set_threads` chose (0: not set, every CPU).
static THREADS: AtomicU64 = AtomicU64::new(0);

/// kiln's thread pool, started by the first `fit`, `evaluate` or
/// `predict`. kiln's kernels are tuned to be driven from inside their pool
/// (as the CLI runs them): driven from outside, every parallel op pays a
/// hand-over between threads, and the tutorial's epoch took 15-45% longer.
static POOL: OnceLock<Arc<rayon::ThreadPool>> = OnceLock::new();

fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    if let Some(p) = POOL.get() {
        return Ok(Arc::clone(p));
    }
    let n = get_threads();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start {n} threads: {e}")))?;
    Ok(Arc::clone(POOL.get_or_init(|| Arc::new(built))))
}

/// Runs kiln's work on `n` threads. Like TensorFlow's thread settings, it
/// takes effect before kiln first runs (its threads are then started);
/// afterwards only the same count is accepted.
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(PyValueError::new_err("set_threads: n must be at least 1"));
    }
    match POOL.get() {
        None => {
            THREADS.store(n as u64, Ordering::Relaxed);
            Ok(())
        }
        Some(p) if p.current_num_threads() == n => Ok(()),
        Some(p) => Err(PyRuntimeError::new_err(format!(
            "set_threads({n}): kiln already runs on {} threads; its threads start with the first fit, evaluate or \
             predict, so call set_threads before it (in a new process)",
            p.current_num_threads()
        ))),
    }
}

/// The threads kiln's work runs (or will run) on.
#[pyfunction]
fn get_threads() -> usize {
    match POOL.get() {
        Some(p) => p.current_num_threads(),
        None => match THREADS.load(Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        },
    }
}

/// A kiln error as Python's `ValueError`, with kiln's one-line message.
fn value_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(kiln::error_line(&e))
}

/// Runs `job` inside kiln's pool with the GIL released, and returns the
/// moment it ends. Called from outside the pool (Python's threads), a
/// helper thread hands `job` to the pool and waits, while this thread runs
/// Python's signal handlers every 50 ms, so Ctrl-C reaches `stop` (which
/// `fit` checks after every step) and is raised when `job` returns. Called
/// from one of the pool's own threads (a callback during `fit` calling
/// `predict`), `job` runs right there: handing it over and waiting would
/// leave a one-thread pool nobody to run it. A panic in `job` comes back
/// as `Panicked`, which [`internal`] turns into a `RuntimeError` with the
/// panic's message: it never unwinds into Python or aborts the interpreter.
fn in_pool<R: Send>(
    py: Python<'_>,
    stop: &Stop,
    job: impl FnOnce() -> PyResult<R> + Send,
) -> Result<PyResult<R>, Panicked> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::mpsc::{channel, RecvTimeoutError};
    let pool = match pool() {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let message = |panic: Box<dyn std::any::Any + Send>| {
        let what =
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Panicked(what.unwrap_or_else(|| "no message".into()))
    };
    if pool.current_thread_index().is_some() {
        // The caller's borrows end with the call, whatever `job` left
        // behind: what `internal` reports is all that is used of it.
        return py.detach(|| catch_unwind(AssertUnwindSafe(job)).map_err(message));
    }
    let outcome = py.detach(|| {
        std::thread::scope(|s| {
            // `done` is dropped when the job ends, returned or panicked.
            let (done, ended) = channel::<()>();
            let job = s.spawn(move || {
                let _done = done;
                pool.install(job)
            });
            while let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(Duration::from_millis(50)) {
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    stop.raise(e);
                }
            }
            job.join().map_err(message)
        })
    });
    // A signal that came after the job last looked (or that a job which
    // never looks, as evaluate, could not see) is raised now.
    let pending = stop.pending.lock().ok().and_then(|mut p| p.take());
    Ok(match (outcome?, pending) {
        (Ok(_), Some(e)) => Err(e),
        (result, _) => result,
    })
}

/// A panic inside kiln, with its message.
struct Panicked(String);

/// `in_pool`'s outcome as Python sees it: a panic is a `RuntimeError`, and
/// when `broken` is given (the job held the model mutably) the model is
/// marked unusable, since the panic may have left it half updated.
fn internal<R>(outcome: Result<PyResult<R>, Panicked>, broken: Option<&AtomicBool>) -> PyResult<R> {
    outcome.unwrap_or_else(|Panicked(what)| {
        if let Some(b) = broken {
            b.store(true, Ordering::Relaxed);
        }
        Err(PyRuntimeError::new_err(format!("kiln failed with an internal error (a bug: please report it): {what}")))
    })
}

/// A test hook: panics inside kiln's pool, as a bug in `fit`, `evaluate`
/// or `predict` would, so that the test suite can show the panic arrives
/// as a `RuntimeError` and the interpreter lives on.
#[pyfunction]
fn _panic_in_pool(py: Python<'_>) -> PyResult<()> {
    internal(
        in_pool(py, &Stop::default(), || -> PyResult<()> { panic!("a deliberate panic (kiln._kiln._panic_in_pool)") }),
        None,
    )
}

/// A 2-D C-contiguous uint8 or float32 array from the Python layer (which
/// flattens and casts), borrowed for as long as kiln reads it: its values
/// are never copied. numpy's borrow flags keep other Rust code from writing
/// to it meanwhile; Python code must not modify an array while `fit`,
/// `evaluate` or `predict` reads it from another thread (as with numpy's
/// own GIL-free operations).
enum Array<'py> {
    U8(PyReadonlyArray2<'py, u8>),
    F32(PyReadonlyArray2<'py, f32>),
}

impl<'py> Array<'py> {
    fn of(x: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = x.extract::<PyReadonlyArray2<'py, u8>>() {
            return Ok(Array::U8(a));
        }
        Ok(Array::F32(x.extract::<PyReadonlyArray2<'py, f32>>()?))
    }

    /// The values (a view of the array's own memory, which `Send`s to
    /// kiln's threads where the array cannot) and the row width.
    fn values(&self) -> PyResult<(Values<'_>, usize)> {
        Ok(match self {
            Array::U8(a) => (Values::U8(a.as_slice()?), a.shape()[1]),
            Array::F32(a) => (Values::F32(a.as_slice()?), a.shape()[1]),
        })
    }
}

#[derive(Clone, Copy)]
enum Values<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}

/// A dataset's rows as the model reads them: pixels when the data are u8
/// (borrowed) or floats that are all exactly `k / 255` (converted once, a
/// byte per value), else the f32 features themselves (borrowed).
enum Rows<'a> {
    Pixels(std::borrow::Cow<'a, [u8]>),
    Features(&'a [f32]),
}

impl<'a> Rows<'a> {
    fn of(v: Values<'a>) -> Self {
        match v {
            Values::U8(p) => Rows::Pixels(p.into()),
            Values::F32(x) => match exact_pixels(x) {
                Some(p) => Rows::Pixels(p.into()),
                None => Rows::Features(x),
            },
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        match self {
            Rows::Pixels(p) => Inputs::Pixels(p),
            Rows::Features(x) => Inputs::Features(x),
        }
    }

    fn samples(&'a self, labels: &'a [u8], width: usize, name: &'a str) -> PyResult<Samples<'a>> {
        let s = match self {
            Rows::Pixels(p) => Samples::new(p, labels, width),
            Rows::Features(x) => Samples::features(x, labels, width),
        };
        Ok(s.map_err(value_error)?.named(name))
    }
}

/// A network and its optimizer state, trained and run by the `kiln` crate.
/// `fit` holds the model for as long as it trains; callbacks called from
/// it (between epochs, or steps) see the weights through `live`.
#[pyclass(module = "kiln._kiln")]
struct Network {
    model: Mutex<Model<'static, f32>>,
    /// While `fit` runs: the weights after the last finished epoch, or
    /// step with batch hooks, and the optimizer's state after the last
    /// epoch (`None` after a step: copying it every step cost more than
    /// the step).
    live: Mutex<Option<Snapshot>>,
    /// Set when a panic inside kiln may have left the model half updated:
    /// it is then refused.
    broken: AtomicBool,
    /// The optimizer and its hyper-parameters (for the model file).
    opt: Optimizer,
    /// Its learning-rate schedule (likewise).
    schedule: kiln_kernels::Schedule,
}

/// A poisoned lock's error (a panic inside kiln while it held the model).
fn poisoned<T>(_: T) -> PyErr {
    PyRuntimeError::new_err("kiln's model is unusable after an earlier internal error")
}

impl Network {
    /// The model, or an error while `fit` holds it.
    fn model(&self, what: &str) -> PyResult<std::sync::MutexGuard<'_, Model<'static, f32>>> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(poisoned(()));
        }
        match self.model.try_lock() {
            Ok(m) => Ok(m),
            Err(std::sync::TryLockError::WouldBlock) => {
                Err(PyRuntimeError::new_err(format!("{what} cannot run while fit is training the model")))
            }
            Err(std::sync::TryLockError::Poisoned(e)) => Err(poisoned(e)),
        }
    }

    /// What `read` reads of the current model: the model itself, or while
    /// `fit` runs, its snapshot after the last finished epoch or step.
    fn current<R>(&self, read: impl Fn(&Model<'_, f32>) -> R, snap: impl Fn(&Snapshot) -> R) -> PyResult<R> {
        match self.model.try_lock() {
            Ok(m) => Ok(read(&m)),
            Err(std::sync::TryLockError::WouldBlock) => {
                let live = self.live.lock().map_err(poisoned)?;
                live.as_ref()
                    .map(snap)
                    .ok_or_else(|| PyRuntimeError::new_err("the model is busy (evaluate runs in another thread)"))
            }
            // Reading the weights stays possible after an internal error.
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(read(&e.into_inner())),
        }
    }

    /// The current weights.
    fn params(&self) -> PyResult<Params<f32>> {
        self.current(|m| m.params(), |(p, _)| p.clone())
    }
}

/// What callbacks see of a model during `fit`: its weights, and after an
/// epoch its optimizer's state.
type Snapshot = (Params<f32>, Option<OptimizerState>);

/// The whole of `m` (an epoch's end, or a model not training).
fn snapshot(m: &Model<'_, f32>) -> Snapshot {
    (m.params(), Some(OptimizerState::of(m)))
}

/// The optimizer named `name` with Keras's arguments `args` (those not
/// given keep Keras's defaults; `schedule` is read by the caller); an
/// argument kiln does not know is an error, never ignored.
fn optimizer(name: &str, args: &Bound<'_, pyo3::types::PyDict>) -> PyResult<Optimizer> {
    let mut keras = KerasArgs::default();
    for (key, value) in args.iter() {
        let key: String = key.extract()?;
        if value.is_none() || key == "schedule" {
            continue;
        }
        let value = if value.is_instance_of::<pyo3::types::PyBool>() {
            KerasValue::Flag(value.is_truthy()?)
        } else {
            let number = value.extract::<f64>().map_err(|_| {
                let got = value.repr().map(|r| r.to_string()).unwrap_or_default();
                PyValueError::new_err(format!("{name}: {key} must be a number, got {got}"))
            })?;
            KerasValue::Number(number)
        };
        keras.set(&key, value).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?;
    }
    Optimizer::from_keras(name, &keras).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `{name: {"class": Keras's class, "defaults": {argument: default}}}` for
/// every optimizer kiln has: the one list, in Rust, that the Python
/// classes are tested against.
fn optimizers(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let all = pyo3::types::PyDict::new(py);
    for name in Optimizer::NAMES {
        let opt =
            Optimizer::from_keras(name, &KerasArgs::default()).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let defaults = pyo3::types::PyDict::new(py);
        for (arg, value) in opt.keras_args().values() {
            match value {
                Some(KerasValue::Number(v)) => defaults.set_item(arg, v)?,
                Some(KerasValue::Flag(v)) => defaults.set_item(arg, v)?,
                None => {}
            }
        }
        let entry = pyo3::types::PyDict::new(py);
        entry.set_item("class", opt.class_name())?;
        entry.set_item("defaults", defaults)?;
        all.set_item(name, entry)?;
    }
    Ok(all)
}

#[pymethods]
impl Network {
    /// A network of the layers `spec` (kiln's `--layers` syntax) on
    /// `inputs` values and `classes` classes, Glorot-initialized from
    /// `seed`, trained by the optimizer `opt` with Keras's arguments `args`.
    #[new]
    fn new(
        spec: &str,
        inputs: usize,
        classes: usize,
        seed: u64,
        opt: &str,
        args: &Bound<'_, pyo3::types::PyDict>,
    ) -> PyResult<Self> {
        let arch = Arch::parse(spec, inputs, classes).map_err(value_error)?;
        let be = kiln_kernels::select("auto").map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let opt = optimizer(opt, args)?;
        let schedule = match args.get_item("schedule")? {
            Some(v) if !v.is_none() => {
                v.extract::<String>()?.parse::<kiln_kernels::Schedule>().map_err(PyValueError::new_err)?
            }
            _ => kiln_kernels::Schedule::Constant,
        };
        let model = Model::new(be, &Params::glorot(&arch, seed), opt).map_err(value_error)?;
        let model = model.with_seed(seed).with_schedule(schedule);
        Ok(Network { model: Mutex::new(model), live: Mutex::new(None), broken: AtomicBool::new(false), opt, schedule })
    }

    /// Trains on rows `x` (2-D uint8 or float32) with class ids `y`
    /// (uint8), as Keras's `fit` does; `report(epoch, logs)` is called
    /// after every epoch (with the GIL) and may raise to stop;
    /// `on_batch(batch, loss, accuracy, steps)`, when given, after every
    /// step (likewise).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, y, epochs, batch_size, shuffle, seed, validation, report, steps_per_epoch=None, on_batch=None))]
    fn fit(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: PyReadonlyArray1<'_, u8>,
        epochs: usize,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        validation: Option<(Bound<'_, PyAny>, PyReadonlyArray1<'_, u8>)>,
        report: Py<PyAny>,
        steps_per_epoch: Option<usize>,
        on_batch: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let x = Array::of(x)?;
        let (values, width) = x.values()?;
        let labels = y.as_slice()?;
        let stop = Arc::new(Stop::default());
        let val_x = validation.as_ref().map(|(vx, _)| Array::of(vx)).transpose()?;
        let val = match (&val_x, &validation) {
            (Some(vx), Some((_, vy))) => Some((vx.values()?, vy.as_slice()?)),
            _ => None,
        };
        let cfg = Config {
            epochs,
            batch_size,
            seed,
            shuffle,
            steps_per_epoch,
            interrupt: Some(interrupted),
            ..Config::default()
        };
        let mut model = self.model("fit")?;
        let model = &mut *model;
        let live = &self.live;
        // Callbacks see these weights until the first epoch ends.
        *live.lock().map_err(poisoned)? = Some(snapshot(model));
        let train = || -> PyResult<()> {
            CURRENT.set(Some(Arc::clone(&stop)));
            let rows = Rows::of(values);
            let data = rows.samples(labels, width, "y")?;
            let val_rows = val.map(|((v, w), l)| (Rows::of(v), w, l));
            let val_data = match &val_rows {
                Some((r, w, l)) => Some(r.samples(l, *w, "validation_data")?),
                None => None,
            };
            let mut progress = train::Progress::default();
            let mut stopped: Option<PyErr> = None;
            // Per-batch callbacks, only when a callback has one (each takes
            // the GIL); an exception from one stops fit after that step.
            let on_step = |st: train::StepProgress, m: &Model<'_, f32>| {
                let Some(f) = &on_batch else { return };
                if stop.now.load(Ordering::Relaxed) {
                    return;
                }
                // Batch hooks see the weights after this step, as Keras's do.
                if let Ok(mut l) = live.lock() {
                    *l = Some((m.params(), None));
                }
                if let Err(e) = Python::attach(|py| f.call1(py, (st.step - 1, st.loss, st.acc, st.steps)).map(drop)) {
                    stop.raise(e);
                }
            };
            let result = train::fit_with(model, data, val_data, &cfg, &mut progress, on_step, |r, m, _| {
                // What callbacks see through get_weights and save.
                if let Ok(mut l) = live.lock() {
                    *l = Some(snapshot(m));
                }
                Python::attach(|py| -> anyhow::Result<()> {
                    let logs = pyo3::types::PyDict::new(py);
                    let set = |k: &str, v: f64| logs.set_item(k, v);
                    let filled = set("loss", r.loss)
                        .and_then(|_| set("accuracy", r.acc))
                        .and_then(|_| set("seconds", r.seconds))
                        .and_then(|_| set("steps", r.steps as f64))
                        .and_then(|_| r.val_loss.map_or(Ok(()), |v| set("val_loss", v)))
                        .and_then(|_| r.val_acc.map_or(Ok(()), |v| set("val_accuracy", v)))
                        .and_then(|_| py.check_signals())
                        .and_then(|_| report.call1(py, (r.epoch - 1, logs)).map(drop));
                    if let Err(e) = filled {
                        stopped = Some(e);
                        anyhow::bail!("stopped");
                    }
                    Ok(())
                })
            });
            CURRENT.set(None);
            let signal = stop.pending.lock().ok().and_then(|mut p| p.take());
            match (result, stopped.or(signal)) {
                (_, Some(e)) => Err(e),
                (Err(e), None) => Err(value_error(e)),
                (Ok(()), None) => Ok(()),
            }
        };
        let outcome = internal(in_pool(py, &stop, train), Some(&self.broken));
        if let Ok(mut l) = self.live.lock() {
            *l = None;
        }
        outcome
    }

    /// `(loss, accuracy)` on rows `x` with class ids `y`.
    fn evaluate(&self, py: Python<'_>, x: &Bound<'_, PyAny>, y: PyReadonlyArray1<'_, u8>) -> PyResult<(f64, f64)> {
        let x = Array::of(x)?;
        let (values, width) = x.values()?;
        let labels = y.as_slice()?;
        let mut model = self.model("evaluate")?;
        let model = &mut *model;
        let outcome = in_pool(py, &Stop::default(), || {
            let rows = Rows::of(values);
            let data = rows.samples(labels, width, "y")?;
            let e = train::evaluate(model, data).map_err(value_error)?;
            Ok((e.loss, e.acc))
        });
        internal(outcome, Some(&self.broken))
    }

    /// Class probabilities `(N, C)` of rows `x`.
    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = Array::of(x)?;
        let (values, width) = x.values()?;
        let params = self.params()?;
        let arch = params.arch();
        if width != arch.inputs() {
            return Err(PyValueError::new_err(format!(
                "rows of {width} values, but the model reads {}",
                arch.inputs()
            )));
        }
        let be = kiln_kernels::select("auto").map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let classes = arch.classes();
        let n = match values {
            Values::U8(v) => v.len(),
            Values::F32(v) => v.len(),
        } / width.max(1);
        let outcome = in_pool(py, &Stop::default(), || {
            kiln::model::probabilities(be, &params, Rows::of(values).inputs()).map_err(value_error)
        });
        // A copy of the weights: a panic leaves the model as it was.
        let probs = internal(outcome, None)?;
        let array = numpy::ndarray::Array2::from_shape_vec((n, classes), probs)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(array.into_pyarray(py))
    }

    /// The weights as Keras orders them: per Dense layer its kernel
    /// `(in, out)` and its bias `(out,)`, as flat lists with shapes.
    fn get_weights(&self) -> PyResult<Vec<(Vec<usize>, Vec<f32>)>> {
        let p = self.params()?;
        let mut out = Vec::new();
        for k in 0..p.arch().dense().len() {
            let (i, o) = p.arch().kernel_shape(k);
            out.push((vec![i, o], p.kernel(k).to_vec()));
            out.push((vec![o], p.bias(k).to_vec()));
        }
        Ok(out)
    }

    /// Replaces the weights (Keras's order, flat float32 lists).
    fn set_weights(&self, weights: Vec<Vec<f32>>) -> PyResult<()> {
        let mut model = self.model("set_weights")?;
        let arch = model.arch().clone();
        let want = 2 * arch.dense().len();
        if weights.len() != want {
            return Err(PyValueError::new_err(format!("{} arrays given; the model has {want}", weights.len())));
        }
        let mut p = Params::<f32>::zeros(&arch);
        for (k, pair) in weights.chunks_exact(2).enumerate() {
            let (i, o) = arch.kernel_shape(k);
            if pair[0].len() != i * o || pair[1].len() != o {
                return Err(PyValueError::new_err(format!(
                    "Dense layer {}: a kernel of {} and a bias of {} values given; expected ({i}, {o}) and ({o},)",
                    k + 1,
                    pair[0].len(),
                    pair[1].len()
                )));
            }
            p.kernel_mut(k).copy_from_slice(&pair[0]);
            p.bias_mut(k).copy_from_slice(&pair[1]);
        }
        if let Some(bad) = p.values().iter().position(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!("weight {bad} is not finite")));
        }
        model.set_params(&p);
        Ok(())
    }

    /// Writes the model as an ONNX graph (see `kiln::onnx`).
    fn export_onnx(&self, path: std::path::PathBuf) -> PyResult<()> {
        kiln::onnx::export(&path, &self.params()?, &Default::default()).map_err(value_error)
    }

    /// Writes the model to a kiln model file (as `train` writes them),
    /// with the optimizer (Keras's constructor call), its learning-rate
    /// schedule and `extra` in its metadata, and with `include_optimizer`,
    /// once it has trained, the optimizer's state (as Keras's `save`
    /// keeps it; a save from a batch hook during `fit` has the weights
    /// only).
    #[pyo3(signature = (path, extra, include_optimizer=true))]
    fn save(
        &self,
        path: std::path::PathBuf,
        extra: std::collections::BTreeMap<String, String>,
        include_optimizer: bool,
    ) -> PyResult<()> {
        let mut meta = extra;
        meta.insert("optimizer".into(), self.opt.describe());
        meta.insert("lr_schedule".into(), self.schedule.spec());
        let (params, state) = self.current(snapshot, Clone::clone)?;
        match state.filter(|s| include_optimizer && s.iterations > 0) {
            Some(state) => kiln::checkpoint::save_with_state(&path, &params, &state, &meta),
            None => kiln::checkpoint::save(&path, &params, &meta),
        }
        .map_err(value_error)
    }

    /// Puts the weights and, when the file has it, the optimizer's state
    /// (with its update count) of the model file `path` into this network,
    /// which must have the file's layers (and optimizer, for the state).
    fn restore(&self, path: std::path::PathBuf) -> PyResult<bool> {
        let mut model = self.model("load_model")?;
        let (params, _, state) = kiln::checkpoint::load_with_state(&path).map_err(value_error)?;
        if params.arch() != model.arch() {
            return Err(PyValueError::new_err(format!(
                "{}: holds the layers {}, not this model's {}",
                path.display(),
                params.arch().spec(),
                model.arch().spec()
            )));
        }
        model.set_params(&params);
        match state {
            Some(s) => {
                let restored = model.set_optimizer_state(s.iterations, &s.slots);
                restored.map_err(|e| value_error(e.context(format!("{}", path.display()))))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A kiln model file (from `train` or `save`): its layers, inputs,
/// classes, weights (Keras's order, flat) and metadata.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load_model(
    path: std::path::PathBuf,
) -> PyResult<(String, usize, usize, Vec<(Vec<usize>, Vec<f32>)>, std::collections::BTreeMap<String, String>)> {
    let (p, meta) = kiln::checkpoint::load(&path).map_err(value_error)?;
    let arch = p.arch();
    let mut weights = Vec::new();
    for k in 0..arch.dense().len() {
        let (i, o) = arch.kernel_shape(k);
        weights.push((vec![i, o], p.kernel(k).to_vec()));
        weights.push((vec![o], p.bias(k).to_vec()));
    }
    Ok((arch.spec(), arch.inputs(), arch.classes(), weights, meta))
}

/// Keras's `model.summary()` text of the layers `spec` on `inputs` values
/// (before any network exists: Keras prints it before `compile`).
#[pyfunction]
fn summary(spec: &str, inputs: usize, classes: usize) -> PyResult<String> {
    Ok(Arch::parse(spec, inputs, classes).map_err(value_error)?.summary())
}

/// MNIST from the vendored IDX files: `(x_train (60000, 28, 28) uint8,
/// y_train (60000,) uint8, x_test, y_test)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load_mnist(py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
    let dir =
        std::env::var_os("KILN_MNIST_DIR").map(std::path::PathBuf::from).unwrap_or_else(kiln::data::default_data_dir);
    let ds = kiln::data::Dataset::load(&dir, &kiln::data::default_cache_dir()).map_err(value_error)?;
    let images = |s: &kiln::data::Split| -> PyResult<Py<PyAny>> {
        let (r, c) = s.shape();
        let a = numpy::ndarray::Array3::from_shape_vec((s.len(), r, c), s.pixels().to_vec())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py).into_any().unbind())
    };
    let labels = |s: &kiln::data::Split| s.labels().to_vec().into_pyarray(py).into_any().unbind();
    Ok((images(&ds.train)?, labels(&ds.train), images(&ds.test)?, labels(&ds.test)))
}

#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Network>()?;
    m.add_function(wrap_pyfunction!(load_mnist, m)?)?;
    m.add_function(wrap_pyfunction!(summary, m)?)?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_pool, m)?)?;
    // The activations kiln has, by Keras's names: the one list, in Rust.
    let activations: Vec<&str> = kiln_kernels::Activation::ALL.iter().map(|a| a.name()).collect();
    m.add("ACTIVATIONS", activations)?;
    m.add("OPTIMIZERS", optimizers(m.py())?)?;
    Ok(())
}
