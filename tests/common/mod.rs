//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kiln::model::{Arch, Params};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// Writes an IDX file `name` (u8 elements of shape `dims`) into `dir`.
pub fn write_idx(dir: &std::path::Path, name: &str, dims: &[u32], data: &[u8]) {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
    v.extend_from_slice(data);
    std::fs::write(dir.join(name), v).unwrap();
}

/// A file under `tests/data/`.
pub fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

/// Keras's reference steps (see `tests/data/keras-golden-README.md`).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    /// The tutorial network's file (64:relu, 10:softmax, RMSprop).
    pub fn load() -> Golden {
        Golden::named("keras-rmsprop-h64")
    }

    /// `tests/data/NAME.safetensors`.
    pub fn named(name: &str) -> Golden {
        let path = test_data(&format!("{name}.safetensors"));
        Golden { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file parses")
    }

    fn meta(&self, key: &str) -> Option<String> {
        let (_, header) = SafeTensors::read_metadata(&self.bytes).expect("golden header");
        header.metadata().as_ref().and_then(|m| m.get(key).cloned())
    }

    /// The layers Keras trained (the older file names only its hidden width).
    pub fn arch(&self) -> Arch {
        let spec = match self.meta("layers") {
            Some(l) => l,
            None => format!("{}:relu,10:softmax", self.meta("hidden").expect("layers or hidden")),
        };
        Arch::parse(&spec, 784, 10).expect("golden layers")
    }

    /// The optimizer Keras trained with, from its config in the metadata
    /// (the older file has none: RMSprop with Keras's defaults).
    pub fn optimizer(&self) -> kiln_kernels::Optimizer {
        use kiln_kernels::{KerasArgs, KerasValue, Optimizer};
        let Some(json) = self.meta("optimizer") else { return Optimizer::default() };
        let c: serde_json::Value = serde_json::from_str(&json).expect("optimizer config is JSON");
        // Keras's config names the class in snake case.
        let name = match c["name"].as_str().expect("optimizer name") {
            "rm_sprop" => "rmsprop",
            "adam_w" => "adamw",
            other => other,
        };
        let takes = Optimizer::arguments(name).unwrap_or_else(|| panic!("optimizer {name} is not one kiln runs"));
        let mut args = KerasArgs::default();
        for &arg in takes {
            // Keras stores the learning rate as the f32 it trains with, widened.
            let value = match (c[arg].as_bool(), c[arg].as_f64()) {
                (Some(b), _) => KerasValue::Flag(b),
                (None, Some(v)) => KerasValue::Number(v),
                (None, None) => panic!("optimizer config lacks {arg}"),
            };
            args.set(arg, value).expect("a Keras argument");
        }
        Optimizer::from_keras(name, &args).expect("Keras's optimizer config trains")
    }

    /// An f32 tensor and its shape.
    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        (v, t.shape().to_vec())
    }

    /// A u8 tensor.
    pub fn u8(&self, name: &str) -> Vec<u8> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    }

    /// The name of layer `l`'s kernel or bias after `step` updates.
    fn tensor_name(&self, l: usize, bias: bool, step: usize) -> String {
        let what = if bias { "bias" } else { "kernel" };
        if self.meta("layers").is_some() {
            format!("dense_{}.{what}.step{step}", l + 1)
        } else {
            format!("{}{}.step{step}", if bias { "b" } else { "w" }, l + 1)
        }
    }

    /// The parameters after `step` updates.
    pub fn params(&self, step: usize) -> Params<f32> {
        let arch = self.arch();
        let mut p = Params::zeros(&arch);
        for l in 0..arch.layers().len() {
            let (k, _) = self.f32(&self.tensor_name(l, false, step));
            let (b, _) = self.f32(&self.tensor_name(l, true, step));
            p.kernel_mut(l).copy_from_slice(&k);
            p.bias_mut(l).copy_from_slice(&b);
        }
        p
    }
}

/// `max |got - want| / max |want|`, the relative error of a whole tensor.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "tensor lengths differ");
    let scale = want.iter().fold(0f64, |m, &w| m.max(f64::from(w).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - f64::from(w)).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// The backends a test runs: `KILN_TEST_BACKEND=NAME` forces one (and the
/// test fails if this machine cannot run it, so CI notices a forced
/// instruction set that silently did not run); otherwise every backend this
/// build and CPU can run.
pub fn backends_under_test() -> Vec<&'static str> {
    match std::env::var("KILN_TEST_BACKEND") {
        Ok(forced) if !forced.is_empty() => {
            let name = kiln_kernels::BACKEND_NAMES
                .iter()
                .copied()
                .find(|n| *n == forced)
                .unwrap_or_else(|| panic!("KILN_TEST_BACKEND={forced} is not a backend name"));
            if let Err(e) = kiln_kernels::select(name) {
                panic!("forced backend did not run: {e}");
            }
            vec![name]
        }
        _ => kiln_kernels::available_backends(),
    }
}
