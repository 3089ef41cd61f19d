//! Model files: every layer's kernel and bias in safetensors format.
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `dense_K.kernel` | F32 | `[in, out]`, `y = x @ kernel + bias` as in Keras |
//! | `dense_K.bias` | F32 | `[out]` |
//!
//! for K = 1..n, layer 1 reading the `inputs` pixels and layer K+1 reading
//! layer K's `out`. Metadata (all strings): `format` = `kiln-sequential-v1`,
//! `layers` = the stack in `--layers` syntax (`512:relu,10:softmax`),
//! `inputs` = pixels per image, `classes`, plus what training recorded
//! (seed, epochs, test accuracy, ...). Files of the first format,
//! `kiln-mlp-v1` (`hidden` = H: one ReLU layer and a 10-class softmax, the
//! same tensor names), still load.
//!
//! A model file may also carry its optimizer's state, so that training
//! continues exactly where it stopped (Python's `model.save`, as Keras's
//! does): per state array (RMSprop's `velocity`, Adam's `momentum` and
//! `velocity`, ...) the tensors `optimizer.NAME.dense_K.kernel` and
//! `.bias`, of the weights' shapes, and the update count in the metadata
//! key `iterations`. [`load`] checks them and leaves them out;
//! [`load_with_state`] returns them. `train` writes weights only.
//!
//! Files are written atomically and deterministically: the header's keys
//! (the metadata, then the tensors) come out sorted and the tensors' data
//! in layer order, so identical models give identical bytes.

use crate::fsutil::{read_regular, write_atomic};
use crate::model::{Arch, Params};
use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// The value of the `format` metadata key.
pub const FORMAT: &str = "kiln-sequential-v1";

/// The first format (one hidden ReLU layer of `hidden` units, 784 inputs,
/// 10 classes), still read.
pub const FORMAT_V1: &str = "kiln-mlp-v1";

/// Where `train` writes its model unless told otherwise (`--out`).
pub const DEFAULT_MODEL_PATH: &str = "kiln-mnist.safetensors";

/// The largest model, `--init` or checkpoint file read: a bound on the
/// read whatever the path is (a device or a pipe never ends). A checkpoint
/// holds the weights up to four times (Adam's state, the best epoch's), so
/// this is a model of about 2 GiB of weights.
pub const MAX_FILE_BYTES: u64 = 8 << 30;

/// The bytes of a safetensors file holding `tensors` (name, shape, values;
/// data in the order given) and `meta`, with every header key sorted: the
/// same inputs always give the same bytes (the `safetensors` crate writes
/// its metadata map in hash order).
pub fn serialize(tensors: &[(String, Vec<usize>, &[f32])], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(meta).expect("strings serialize"));
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("a JSON object");
    // The data starts 8-byte aligned, as the format's own writer pads it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, values) in tensors {
        for v in values.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Saves `params` to `path` atomically, with `extra` added to the metadata.
pub fn save(path: &Path, params: &Params<f32>, extra: &BTreeMap<String, String>) -> Result<()> {
    let arch = params.arch();
    let mut meta = extra.clone();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("layers".into(), arch.spec());
    meta.insert("inputs".into(), arch.inputs().to_string());
    meta.insert("classes".into(), arch.classes().to_string());
    write_atomic(path, &serialize(&params.named_tensors(), &meta))
}

/// The largest update count a file may give (what f64 counts exactly; the
/// next update's number must not overflow).
const MAX_ITERATIONS: u64 = 1 << 53;

/// An optimizer's state as a model file carries it: with it, a loaded model
/// trains on exactly as the saved one would have.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The updates made so far (what bias corrections and schedules count).
    pub iterations: u64,
    /// The state arrays by name ([`crate::model::Model::optimizer_state`]).
    pub slots: Vec<(String, Params<f32>)>,
}

impl OptimizerState {
    /// `model`'s optimizer state.
    pub fn of(model: &crate::model::Model<'_, f32>) -> Self {
        let slots = model.optimizer_state().into_iter().map(|(n, p)| (n.to_string(), p)).collect();
        OptimizerState { iterations: model.iterations(), slots }
    }
}

/// [`save`] with the optimizer's `state` in the file as well (the module's
/// doc has the tensors).
pub fn save_with_state(
    path: &Path,
    params: &Params<f32>,
    state: &OptimizerState,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let arch = params.arch();
    ensure!(
        state.slots.iter().all(|(_, p)| p.arch() == arch),
        "the optimizer state is of other layers than the weights"
    );
    let mut meta = extra.clone();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("layers".into(), arch.spec());
    meta.insert("inputs".into(), arch.inputs().to_string());
    meta.insert("classes".into(), arch.classes().to_string());
    meta.insert("iterations".into(), state.iterations.to_string());
    let mut tensors = params.named_tensors();
    for (name, p) in &state.slots {
        tensors.extend(p.named_tensors().into_iter().map(|(t, s, v)| (format!("optimizer.{name}.{t}"), s, v)));
    }
    write_atomic(path, &serialize(&tensors, &meta))
}

/// The top-level keys of a safetensors JSON header, in order, duplicates
/// kept (a map type would silently keep only the last of each).
fn header_keys(json: &[u8]) -> std::result::Result<Vec<String>, serde_json::Error> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    serde_json::Deserializer::from_slice(json).deserialize_map(Keys)
}

/// A parsed safetensors file: its tensors (name -> shape, dtype, raw bytes)
/// and its metadata.
struct Contents<'a> {
    st: SafeTensors<'a>,
    meta: BTreeMap<String, String>,
}

/// Parses the container, with one-line errors naming `path`.
fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<Contents<'a>> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    if bytes.len() < 8 {
        bail!(fail(format!("not a safetensors file: {} bytes, too short for the 8-byte header length", bytes.len())));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > (bytes.len() - 8) as u64 {
        bail!(fail(format!(
            "not a safetensors file, or truncated: the header length says {n} bytes, but only {} follow",
            bytes.len() - 8
        )));
    }
    let keys = header_keys(&bytes[8..8 + n as usize])
        .map_err(|e| fail(format!("not a safetensors file: the header is not a JSON object ({e})")))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = keys.iter().find(|k| !seen.insert(k.as_str())) {
        bail!(fail(format!("tensor `{dup}` appears twice in the header")));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        fail(match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                "truncated: the tensors' data ends past the end of the file".to_string()
            }
            e => format!("not a valid safetensors file ({e})"),
        })
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| fail(format!("bad header ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(Contents { st, meta })
}

/// The layers `dense_1 .. dense_n` the file's kernels describe, as `(in,
/// out)` per layer, checking that every tensor is one of them, that no
/// layer is missing and that the shapes chain.
fn layer_shapes(c: &Contents<'_>, path: &Path) -> Result<Vec<(usize, usize)>> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let mut layers = BTreeMap::new();
    // The optimizer's tensors are checked with the state (`read_slots`).
    for name in c.st.names().into_iter().filter(|n| !n.starts_with("optimizer.")) {
        let layer = name
            .strip_prefix("dense_")
            .and_then(|r| r.strip_suffix(".kernel").or_else(|| r.strip_suffix(".bias")))
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&k| k >= 1);
        let Some(k) = layer else {
            bail!(fail(format!(
                "unknown tensor `{name}` (a model holds dense_K.kernel and dense_K.bias, K = 1, 2, ...)"
            )));
        };
        layers.insert(k, ());
    }
    let n = layers.keys().next_back().copied().unwrap_or(0);
    if n == 0 {
        bail!(fail("holds no tensors; expected dense_1.kernel, dense_1.bias, ...".into()));
    }
    let mut shapes = Vec::new();
    for k in 1..=n {
        let kernel = c
            .st
            .tensor(&format!("dense_{k}.kernel"))
            .map_err(|_| fail(format!("tensor `dense_{k}.kernel` is missing (the file has layers up to dense_{n})")))?;
        let shape = kernel.shape();
        if shape.len() != 2 {
            bail!(fail(format!("tensor `dense_{k}.kernel` has shape {shape:?}; expected 2 dimensions [in, out]")));
        }
        let (i, o) = (shape[0], shape[1]);
        if let Some(&(_, prev)) = shapes.last() {
            if i != prev {
                bail!(fail(format!(
                    "tensor `dense_{k}.kernel` has shape {shape:?}, but dense_{}.kernel has {prev} outputs: \
                     the shapes do not chain (kernels are stored [in, out])",
                    k - 1
                )));
            }
        }
        shapes.push((i, o));
    }
    Ok(shapes)
}

/// Reads every tensor of `arch` from the file into [`Params`], checking
/// names, dtypes, shapes and values.
fn read_params(c: &Contents<'_>, arch: &Arch, path: &Path) -> Result<Params<f32>> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let shapes = layer_shapes(c, path)?;
    if shapes.len() != arch.dense().len() {
        bail!(fail(format!(
            "holds {} layers (dense_1 .. dense_{}), but the model {} has {}",
            shapes.len(),
            shapes.len(),
            arch.spec(),
            arch.dense().len()
        )));
    }
    // The kernels' shapes must be the architecture's before anything is
    // allocated for it: the file's own size then bounds the allocation (a
    // few bytes of metadata cannot ask for gigabytes).
    for (l, &(i, o)) in shapes.iter().enumerate() {
        let want = arch.kernel_shape(l);
        if (i, o) != want {
            let hint = if (o, i) == want { " (transposed? kernels are stored [in, out])" } else { "" };
            bail!(fail(format!(
                "tensor `dense_{}.kernel` has shape [{i}, {o}], expected [{}, {}] for the layers {} on {} inputs{hint}",
                l + 1,
                want.0,
                want.1,
                arch.spec(),
                arch.inputs()
            )));
        }
    }
    let mut params = Params::<f32>::zeros(arch);
    let named: Vec<(String, Vec<usize>)> = params.named_tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
    let mut offset = 0;
    for (name, shape) in named {
        let t = c.st.tensor(&name).map_err(|_| fail(format!("tensor `{name}` is missing")))?;
        if t.dtype() != Dtype::F32 {
            bail!(fail(format!("tensor `{name}` has dtype {:?}, expected F32", t.dtype())));
        }
        if t.shape() != shape.as_slice() {
            let mut reversed = shape.clone();
            reversed.reverse();
            let hint = if t.shape() == reversed.as_slice() && shape.len() == 2 {
                " (transposed? kernels are stored [in, out])"
            } else {
                ""
            };
            bail!(fail(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} for the layers {} on {} inputs{hint}",
                t.shape(),
                arch.spec(),
                arch.inputs()
            )));
        }
        let dst = &mut params.values_mut()[offset..offset + t.data().len() / 4];
        for (d, b) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if let Some(i) = dst.iter().position(|v| !v.is_finite()) {
            bail!(fail(format!("tensor `{name}` holds a non-finite value ({}) at flat index {i}", dst[i])));
        }
        offset += dst.len();
    }
    Ok(params)
}

/// The architecture a model file's metadata names.
fn arch_of(meta: &BTreeMap<String, String>, path: &Path) -> Result<Arch> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let number = |key: &str| -> Result<usize> {
        meta.get(key)
            .and_then(|h| h.parse().ok())
            .filter(|&h: &usize| h > 0)
            .ok_or_else(|| fail(format!("metadata `{key}` is {}, expected a positive integer", shown(meta.get(key)))))
    };
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {
            let spec = meta.get("layers").ok_or_else(|| fail("metadata `layers` is missing".into()))?;
            let (inputs, classes) = (number("inputs")?, number("classes")?);
            Arch::parse(spec, inputs, classes).map_err(|e| fail(format!("metadata `layers`: {e:#}")))
        }
        Some(FORMAT_V1) => {
            let hidden = number("hidden")?;
            Arch::parse(&format!("{hidden}:relu,10:softmax"), 784, 10).map_err(|e| fail(format!("{e:#}")))
        }
        other => bail!(fail(format!(
            "metadata `format` is {}, expected \"{FORMAT}\" (or \"{FORMAT_V1}\")",
            shown(other.map(str::to_string).as_ref())
        ))),
    }
}

/// A run setting of a checkpoint as its flag would say it: `--seed 2`,
/// `--validation-split 0.1`, `--steps-per-epoch 3`, `no --early-stopping`.
fn setting(key: &str, value: Option<&String>) -> String {
    let Some(v) = value else { return format!("no {key}") };
    let inner = v.strip_prefix("Some(").and_then(|r| r.strip_suffix(')'));
    match (key, v.as_str()) {
        ("validation", "None") => "no validation".into(),
        ("validation", "Test") => "--validate-on-test".into(),
        ("validation", s) => match s.strip_prefix("Split(").and_then(|r| r.strip_suffix(')')) {
            Some(f) => format!("--validation-split {f}"),
            None => format!("validation {s}"),
        },
        (_, "None") => format!("no {key}"),
        ("--early-stopping", _) => {
            let field = |name: &str| v.split(name).nth(1).and_then(|r| r.split([',', ' ', '}']).nth(1)).unwrap_or("?");
            let restore = if field("restore_best:") == "true" { " --restore-best" } else { "" };
            format!("--early-stopping {}{restore}", field("patience:"))
        }
        ("--no-shuffle", "true") => "--no-shuffle".into(),
        ("--no-shuffle", _) => "shuffling".into(),
        (k, _) if !k.starts_with("--") => format!("{k} {v}"),
        (k, _) => format!("{k} {}", inner.unwrap_or(v)),
    }
}

/// A metadata value for an error message: `"value"`, or `missing`.
fn shown(v: Option<&String>) -> String {
    v.map_or_else(|| "missing".to_string(), |v| format!("{v:?}"))
}

/// Loads and validates a model file written by [`save`]. Every failure is
/// one line naming the file and what is wrong.
pub fn load(path: &Path) -> Result<(Params<f32>, BTreeMap<String, String>)> {
    if !path.exists() {
        bail!("{}: cannot read the model file: it does not exist", path.display());
    }
    let bytes = read_regular(path, MAX_FILE_BYTES, "the model file")?;
    from_bytes(&bytes, path)
}

/// [`load`] on the bytes of a model file already in memory; `path` only
/// names it in errors. Any byte string gives a validated model or an error,
/// never a panic (fuzzed: `fuzz/fuzz_targets/model.rs`).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<(Params<f32>, BTreeMap<String, String>)> {
    state_from_bytes(bytes, path).map(|(p, meta, _)| (p, meta))
}

/// [`load`], with the optimizer's state when the file carries it.
#[allow(clippy::type_complexity)]
pub fn load_with_state(path: &Path) -> Result<(Params<f32>, BTreeMap<String, String>, Option<OptimizerState>)> {
    if !path.exists() {
        bail!("{}: cannot read the model file: it does not exist", path.display());
    }
    let bytes = read_regular(path, MAX_FILE_BYTES, "the model file")?;
    state_from_bytes(&bytes, path)
}

#[allow(clippy::type_complexity)]
fn state_from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<(Params<f32>, BTreeMap<String, String>, Option<OptimizerState>)> {
    let c = parse(bytes, path)?;
    let arch = arch_of(&c.meta, path)?;
    let params = read_params(&c, &arch, path)?;
    let state = read_state(&c, &arch, path)?;
    Ok((params, c.meta, state))
}

/// The optimizer's state in a file of `arch`'s weights, if it has any,
/// every tensor and the metadata checked.
fn read_state(c: &Contents<'_>, arch: &Arch, path: &Path) -> Result<Option<OptimizerState>> {
    let mut expected = std::collections::HashSet::new();
    let slots = read_slots(c, arch, path, &mut expected)?;
    if let Some(extra) = c.st.names().into_iter().find(|n| n.starts_with("optimizer.") && !expected.contains(*n)) {
        bail!("{}: unknown tensor `{extra}`", path.display());
    }
    Ok(match c.meta.get("iterations") {
        Some(i) => {
            let iterations = i.parse().ok().filter(|&n| n <= MAX_ITERATIONS).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: metadata `iterations` is {i:?}, expected a whole number up to 2^53",
                    path.display()
                )
            })?;
            Some(OptimizerState { iterations, slots })
        }
        None if slots.is_empty() => None,
        None => bail!("{}: holds optimizer state but no metadata `iterations`", path.display()),
    })
}

/// The optimizer's state arrays in a file (`optimizer.NAME.dense_K.*`),
/// each a whole set of tensors of `arch`'s shapes, sorted by name; every
/// tensor read is added to `expected`.
fn read_slots(
    c: &Contents<'_>,
    arch: &Arch,
    path: &Path,
    expected: &mut std::collections::HashSet<String>,
) -> Result<Vec<(String, Params<f32>)>> {
    let mut names = std::collections::BTreeSet::new();
    for name in c.st.names() {
        if let Some(rest) = name.strip_prefix("optimizer.") {
            let Some((slot, _)) = rest.split_once('.') else {
                bail!("{}: unknown tensor `{name}` (optimizer state is optimizer.NAME.dense_K.*)", path.display());
            };
            names.insert(slot.to_string());
        }
    }
    names
        .into_iter()
        .map(|n| Ok((n.clone(), read_group(c, arch, &format!("optimizer.{n}."), path, expected)?)))
        .collect()
}

/// Every tensor of `arch` under `prefix` (`best.dense_1.kernel`, ...) into
/// [`Params`], checking dtypes, shapes and values; each name read is added
/// to `expected`.
fn read_group(
    c: &Contents<'_>,
    arch: &Arch,
    prefix: &str,
    path: &Path,
    expected: &mut std::collections::HashSet<String>,
) -> Result<Params<f32>> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let mut p = Params::<f32>::zeros(arch);
    let names: Vec<(String, Vec<usize>)> = p.named_tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
    let mut offset = 0;
    for (name, shape) in names {
        let full = format!("{prefix}{name}");
        let t = c.st.tensor(&full).map_err(|_| fail(format!("tensor `{full}` is missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
            bail!(fail(format!("tensor `{full}` is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape())));
        }
        let dst = &mut p.values_mut()[offset..offset + t.data().len() / 4];
        for (d, b) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if let Some(i) = dst.iter().position(|v| !v.is_finite()) {
            bail!(fail(format!("tensor `{full}` holds a non-finite value ({}) at flat index {i}", dst[i])));
        }
        offset += dst.len();
        expected.insert(full);
    }
    Ok(p)
}

/// Initial weights for `arch` from a safetensors file (`train --init`): the
/// tensors `dense_K.kernel` `[in, out]` and `dense_K.bias` for K = 1..n, as
/// Keras names its Dense layers; metadata is not needed (a file exported
/// from Keras loads as it is), and when it names layers they must be
/// `arch`'s. The shapes must be exactly `arch`'s. Optimizer state in the
/// file ([`save_with_state`]) is checked and left out.
pub fn load_init(path: &Path, arch: &Arch) -> Result<Params<f32>> {
    let bytes = read_regular(path, MAX_FILE_BYTES, "the initial weights file")?;
    let c = parse(&bytes, path)?;
    if let Some(spec) = c.meta.get("layers") {
        if *spec != arch.spec() {
            bail!("{}: its metadata names the layers {spec}, but this run trains {}", path.display(), arch.spec());
        }
    }
    let shapes = layer_shapes(&c, path)?;
    let want: Vec<(usize, usize)> = (0..arch.dense().len()).map(|l| arch.kernel_shape(l)).collect();
    if shapes != want {
        let show = |s: &[(usize, usize)]| s.iter().map(|(i, o)| format!("{i}x{o}")).collect::<Vec<_>>().join(", ");
        bail!(
            "{}: its kernels are {} (in x out), but the layers {} on {} inputs need {}",
            path.display(),
            show(&shapes),
            arch.spec(),
            arch.inputs(),
            show(&want)
        );
    }
    let params = read_params(&c, arch, path)?;
    // A file saved with its optimizer's state starts a run too (the state
    // is checked, not used: a new run starts its optimizer afresh).
    read_state(&c, arch, path)?;
    Ok(params)
}

/// The value of the `format` metadata key of a training checkpoint.
pub const CHECKPOINT_FORMAT: &str = "kiln-checkpoint-v1";

/// What a training checkpoint holds besides the run's description: with
/// it, [`crate::train::fit_with`] continues a run exactly where it stopped.
#[derive(Clone, Debug)]
pub struct Resume {
    /// The weights at the end of the last epoch done.
    pub params: Params<f32>,
    /// The optimizer's state arrays, by name ([`crate::model::Model::optimizer_state`]).
    pub state: Vec<(String, Params<f32>)>,
    /// The optimizer's update count.
    pub iterations: u64,
    /// The epochs' reports, the position in the data, early stopping's state.
    pub progress: crate::train::Progress,
}

impl Resume {
    /// Puts the weights and the optimizer's state into `model`.
    pub fn restore(&self, model: &mut crate::model::Model<'_, f32>) -> Result<()> {
        model.set_params(&self.params);
        model.set_optimizer_state(self.iterations, &self.state)
    }
}

/// Writes a training checkpoint atomically (a run killed while writing
/// leaves the previous checkpoint whole): `model`'s weights
/// (`dense_K.kernel`, `dense_K.bias`), its optimizer's state
/// (`optimizer.NAME.dense_K.*`), early stopping's best weights
/// (`best.dense_K.*`), and in the metadata the update count, `progress`
/// (JSON) and `run`, the settings a resumed run must share (JSON).
pub fn save_resume(
    path: &Path,
    model: &crate::model::Model<'_, f32>,
    progress: &crate::train::Progress,
    run: &BTreeMap<String, String>,
) -> Result<()> {
    let arch = model.arch();
    let params = model.params();
    let state = model.optimizer_state();
    let mut tensors = params.named_tensors();
    for (name, p) in &state {
        tensors.extend(p.named_tensors().into_iter().map(|(t, s, v)| (format!("optimizer.{name}.{t}"), s, v)));
    }
    if let Some(best) = &progress.stopping.best_weights {
        tensors.extend(best.named_tensors().into_iter().map(|(t, s, v)| (format!("best.{t}"), s, v)));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
    meta.insert("layers".into(), arch.spec());
    meta.insert("inputs".into(), arch.inputs().to_string());
    meta.insert("classes".into(), arch.classes().to_string());
    meta.insert("iterations".into(), model.iterations().to_string());
    meta.insert("progress".into(), serde_json::to_string(progress).context("progress as JSON")?);
    meta.insert("run".into(), serde_json::to_string(run).context("run settings as JSON")?);
    write_atomic(path, &serialize(&tensors, &meta))
}

/// Reads a checkpoint written by [`save_resume`] for a run of `arch` with
/// the settings `run`; every mismatch (other layers, optimizer, data or
/// fit options; a truncated or corrupt file) is a one-line error naming
/// the file and what differs.
pub fn load_resume(path: &Path, arch: &Arch, run: &BTreeMap<String, String>) -> Result<Resume> {
    let fail = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let bytes = read_regular(path, MAX_FILE_BYTES, "the checkpoint")?;
    let c = parse(&bytes, path)?;
    if c.meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        bail!(fail(format!(
            "metadata `format` is {}, expected \"{CHECKPOINT_FORMAT}\" (a checkpoint written by checkpoint::save_resume, as train --checkpoint does)",
            shown(c.meta.get("format"))
        )));
    }
    let meta = |key: &str| c.meta.get(key).ok_or_else(|| fail(format!("metadata `{key}` is missing")));
    let theirs = (meta("layers")?.as_str(), meta("inputs")?.as_str(), meta("classes")?.as_str());
    let ours = (arch.spec(), arch.inputs().to_string(), arch.classes().to_string());
    if theirs != (ours.0.as_str(), ours.1.as_str(), ours.2.as_str()) {
        bail!(fail(format!(
            "the checkpoint is of the layers {} on {} inputs, {} classes, but this run trains {} on {} inputs, {} classes",
            theirs.0, theirs.1, theirs.2, ours.0, ours.1, ours.2
        )));
    }
    let saved: BTreeMap<String, String> =
        serde_json::from_str(meta("run")?).map_err(|e| fail(format!("metadata `run` is not a JSON map ({e})")))?;
    // The flags first (`--init` last of them: it names the seed too, which
    // `--seed` says better), then what follows from them (validation, the
    // data's fingerprints), so the first difference named is the cause.
    let rank = |k: &str| match k {
        "--init" => 1,
        k if k.starts_with("--") => 0,
        "validation" => 2,
        _ => 3,
    };
    let mut keys: Vec<&String> = saved.keys().chain(run.keys()).collect();
    keys.sort_by_key(|k| (rank(k), k.as_str()));
    for key in keys {
        let (a, b) = (saved.get(key), run.get(key));
        if a != b {
            bail!(fail(format!(
                "the checkpoint was made with {}, but this run has {}; resume with the same settings",
                setting(key, a),
                setting(key, b)
            )));
        }
    }
    let iterations: u64 = meta("iterations")?
        .parse()
        .ok()
        .filter(|&n| n <= MAX_ITERATIONS)
        .ok_or_else(|| fail("metadata `iterations` is not a whole number up to 2^53".into()))?;
    let mut progress: crate::train::Progress = serde_json::from_str(meta("progress")?)
        .map_err(|e| fail(format!("metadata `progress` is not what train writes ({e})")))?;
    // The weights, the optimizer's slots (named by the tensors), the best
    // weights if any; then nothing else.
    let mut expected = std::collections::HashSet::new();
    let params = read_group(&c, arch, "", path, &mut expected)?;
    let state = read_slots(&c, arch, path, &mut expected)?;
    let best = match c.st.names().iter().any(|n| n.starts_with("best.")) {
        true => Some(read_group(&c, arch, "best.", path, &mut expected)?),
        false => None,
    };
    if let Some(extra) = c.st.names().into_iter().find(|n| !expected.contains(*n)) {
        bail!(fail(format!("unknown tensor `{extra}` in a checkpoint")));
    }
    progress.stopping.best_weights = best;
    Ok(Resume { params, state, iterations, progress })
}
