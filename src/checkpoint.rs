//! Model files: the four parameter tensors in safetensors format.
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `dense_1.kernel` | F32 | `[784, H]` (in, out), `y = x @ kernel + bias` as in Keras |
//! | `dense_1.bias` | F32 | `[H]` |
//! | `dense_2.kernel` | F32 | `[H, 10]` |
//! | `dense_2.bias` | F32 | `[10]` |
//!
//! Metadata (all strings): `format` = `kiln-mlp-v1`, `hidden` = `H`,
//! `inputs` = `784`, `classes` = `10`, plus what training recorded (seed,
//! epochs, test accuracy, ...). Files are written atomically.

use crate::data::{CLASSES, PIXELS};
use crate::fsutil::write_atomic;
use crate::model::{tensor_shapes, Params};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The value of the `format` metadata key.
pub const FORMAT: &str = "kiln-mlp-v1";

/// Where `train` writes its model unless told otherwise (`--out`).
pub const DEFAULT_MODEL_PATH: &str = "kiln-mnist.safetensors";

/// Saves `params` (in any layout; the file is row-major) to `path`
/// atomically, with `extra` added to the metadata.
pub fn save(path: &Path, params: &Params<f32>, extra: &BTreeMap<String, String>) -> Result<()> {
    let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("hidden".into(), params.hidden.to_string());
    meta.insert("inputs".into(), PIXELS.to_string());
    meta.insert("classes".into(), CLASSES.to_string());
    let params = params.to_row_major();
    let t = params.tensors();
    let bytes: Vec<Vec<u8>> =
        [t.w1, t.b1, t.w2, t.b2].iter().map(|s| s.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = tensor_shapes(params.hidden)
        .into_iter()
        .zip(&bytes)
        .map(|((name, shape), data)| Ok((name, safetensors::tensor::TensorView::new(Dtype::F32, shape, data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let file = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(meta))
        .with_context(|| format!("{}: cannot serialize the model", path.display()))?;
    write_atomic(path, &file)
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

/// Loads and validates a model file written by [`save`] (row-major). Every
/// failure is one line naming the file and what is wrong.
pub fn load(path: &Path) -> Result<(Params<f32>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("{}: cannot read the model file (hint: run `cargo run --release --bin train` first)", path.display())
    })?;
    from_bytes(&bytes, path)
}

/// [`load`] on the bytes of a model file already in memory; `path` only
/// names it in errors. Any byte string gives a validated model or an error,
/// never a panic (fuzzed: `fuzz/fuzz_targets/model.rs`).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<(Params<f32>, HashMap<String, String>)> {
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
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!(fail(format!("metadata `format` is {:?}, expected \"{FORMAT}\"", meta.get("format"))));
    }
    let hidden: usize =
        meta.get("hidden").and_then(|h| h.parse().ok()).filter(|&h| h > 0).ok_or_else(|| {
            fail(format!("metadata `hidden` is {:?}, expected a positive integer", meta.get("hidden")))
        })?;
    let shapes = tensor_shapes(hidden);
    for name in st.names() {
        if !shapes.iter().any(|(n, _)| *n == name) {
            let known: Vec<&str> = shapes.iter().map(|(n, _)| *n).collect();
            bail!(fail(format!("unknown tensor `{name}` (a model has exactly {})", known.join(", "))));
        }
    }
    let mut params = Params::<f32>::zeros(hidden);
    let mut offset = 0;
    for (name, shape) in shapes {
        let t = st.tensor(name).map_err(|_| fail(format!("tensor `{name}` is missing")))?;
        if t.dtype() != Dtype::F32 {
            bail!(fail(format!("tensor `{name}` has dtype {:?}, expected F32", t.dtype())));
        }
        if t.shape() != shape.as_slice() {
            let mut reversed = shape.clone();
            reversed.reverse();
            let hint = if t.shape() == reversed.as_slice() {
                " (transposed? kernels are stored (in, out))".to_string()
            } else if t.shape().len() == shape.len() {
                format!(" (does the metadata's hidden width {hidden} match the tensors?)")
            } else {
                String::new()
            };
            bail!(fail(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} for hidden width {hidden}{hint}",
                t.shape()
            )));
        }
        let dst = &mut params.data[offset..offset + t.data_len() / 4];
        for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        if let Some(i) = dst.iter().position(|v| !v.is_finite()) {
            bail!(fail(format!("tensor `{name}` holds a non-finite value ({}) at flat index {i}", dst[i])));
        }
        offset += dst.len();
    }
    Ok((params, meta))
}
