//! Every malformed model file the loader must reject, each with a one-line
//! error naming the file and what is wrong; and the round trip of a good one.

use kiln::checkpoint::{load, save};
use kiln::model::Params;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const H: usize = 8;

fn f32_bytes(n: usize, v: f32) -> Vec<u8> {
    (0..n).flat_map(|_| v.to_le_bytes()).collect()
}

/// A model file with the given tensors (name, dtype, shape, bytes) and metadata.
fn write(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: &[(&str, &str)]) -> PathBuf {
    let views: Vec<(&str, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let p = dir.join("m.safetensors");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn good_tensors() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    vec![
        ("dense_1.kernel", Dtype::F32, vec![784, H], f32_bytes(784 * H, 0.5)),
        ("dense_1.bias", Dtype::F32, vec![H], f32_bytes(H, 0.0)),
        ("dense_2.kernel", Dtype::F32, vec![H, 10], f32_bytes(H * 10, -0.25)),
        ("dense_2.bias", Dtype::F32, vec![10], f32_bytes(10, 0.0)),
    ]
}

const META: &[(&str, &str)] = &[("format", "kiln-mlp-v1"), ("hidden", "8")];

fn error(p: &Path) -> String {
    let e = format!("{:#}", load(p).expect_err("must be rejected"));
    assert!(e.contains(&p.display().to_string()), "error does not name the file: {e}");
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

fn assert_contains(e: &str, want: &str) {
    assert!(e.contains(want), "expected {want:?} in: {e}");
}

#[test]
fn a_saved_model_loads_back_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    let params = Params::<f32>::glorot(H, 3);
    save(&p, &params, &Default::default()).unwrap();
    let (back, meta) = load(&p).unwrap();
    assert_eq!(back, params);
    assert_eq!(meta["hidden"], "8");
    assert!(load(&write(d.path(), &good_tensors(), META)).is_ok());
}

#[test]
fn not_safetensors_short_and_truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    std::fs::write(&p, b"abc").unwrap();
    assert_contains(&error(&p), "too short");
    std::fs::write(&p, b"this is a text file, not a model").unwrap();
    assert_contains(&error(&p), "not a safetensors file");
    let good = std::fs::read(write(d.path(), &good_tensors(), META)).unwrap();
    std::fs::write(&p, &good[..good.len() - 10]).unwrap();
    assert_contains(&error(&p), "truncated");
    let mut big = good.clone();
    big[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    std::fs::write(&p, &big).unwrap();
    assert_contains(&error(&p), "the header length says");
    let mut garbage = good.clone();
    garbage[8] = b'[';
    std::fs::write(&p, &garbage).unwrap();
    assert_contains(&error(&p), "the header is not a JSON object");
}

#[test]
fn unknown_duplicate_and_missing_tensors() {
    let d = tempfile::tempdir().unwrap();
    let mut t = good_tensors();
    t.push(("dense_3.kernel", Dtype::F32, vec![1], f32_bytes(1, 0.0)));
    assert_contains(&error(&write(d.path(), &t, META)), "unknown tensor `dense_3.kernel`");
    let mut t = good_tensors();
    t.remove(3);
    assert_contains(&error(&write(d.path(), &t, META)), "tensor `dense_2.bias` is missing");
    // Duplicate: rename a key in the JSON header to repeat another.
    let p = write(d.path(), &good_tensors(), META);
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap().replace("dense_1.bias", "dense_2.bias");
    bytes[8..8 + n].copy_from_slice(header.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_contains(&error(&p), "tensor `dense_2.bias` appears twice");
}

#[test]
fn wrong_dtype_shape_hidden_and_values() {
    let d = tempfile::tempdir().unwrap();
    let mut t = good_tensors();
    t[1] = ("dense_1.bias", Dtype::F64, vec![H], vec![0; H * 8]);
    assert_contains(&error(&write(d.path(), &t, META)), "tensor `dense_1.bias` has dtype F64, expected F32");
    let mut t = good_tensors();
    t[0].2 = vec![H, 784];
    assert_contains(&error(&write(d.path(), &t, META)), "(transposed?");
    let e = error(&write(d.path(), &good_tensors(), &[("format", "kiln-mlp-v1"), ("hidden", "16")]));
    assert_contains(&e, "expected [784, 16] for hidden width 16");
    assert_contains(&e, "metadata's hidden width");
    let mut t = good_tensors();
    t[3].3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_contains(
        &error(&write(d.path(), &t, META)),
        "tensor `dense_2.bias` holds a non-finite value (NaN) at flat index 2",
    );
    let mut t = good_tensors();
    t[0].3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_contains(&error(&write(d.path(), &t, META)), "non-finite value (inf)");
}

#[test]
fn metadata_is_checked() {
    let d = tempfile::tempdir().unwrap();
    assert_contains(&error(&write(d.path(), &good_tensors(), &[("hidden", "8")])), "metadata `format`");
    let e = error(&write(d.path(), &good_tensors(), &[("format", "kiln-mlp-v1"), ("hidden", "eight")]));
    assert_contains(&e, "metadata `hidden` is Some(\"eight\"), expected a positive integer");
}
