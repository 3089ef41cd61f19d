//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kiln::model::Params;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// A file under `tests/data/`.
pub fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

/// Keras's reference steps (see `tests/data/keras-golden-README.md`).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn load() -> Golden {
        Golden { bytes: std::fs::read(test_data("keras-rmsprop-h64.safetensors")).expect("golden file") }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file parses")
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

    /// The parameters after `step` updates, in kiln's arena order.
    pub fn params(&self, step: usize) -> Params<f32> {
        let (w2, shape) = self.f32(&format!("w2.step{step}"));
        let mut p = Params::zeros(shape[0]);
        let mut off = 0;
        for name in ["w1", "b1", "w2", "b2"] {
            let (v, _) = if name == "w2" { (w2.clone(), vec![]) } else { self.f32(&format!("{name}.step{step}")) };
            p.data[off..off + v.len()].copy_from_slice(&v);
            off += v.len();
        }
        assert_eq!(off, p.data.len());
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
