//! Keras-style `.npz` datasets (`tests/data/make_npz.py` wrote the files
//! with NumPy): the uint8 archive as `keras.datasets.mnist` caches it, the
//! same images as float32 `x / 255` (stored, so memory-mapped) and as
//! float64 with one-hot labels, train to the same tensors as the IDX files
//! of those images; standardized features train through the f32 path; and
//! every malformed archive is one error line naming the file and array.

mod common;
use common::write_idx;
use kiln::data::Dataset;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--data", data.to_str().unwrap(), "--layers", "32:relu,dropout:0.2,16:tanh"];
    if !extra.contains(&"--epochs") {
        args.extend(["--epochs", "2"]);
    }
    args.extend(["--batch-size", "32", "--json", "--out", out.to_str().unwrap()]);
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_train")).args(&args).env_remove("KILN_BACKEND").output().unwrap()
}

#[test]
fn every_form_of_the_same_images_trains_to_the_same_tensors() {
    let u8s = Dataset::load_npz(&fixture("mnist-small.npz")).unwrap();
    assert!(u8s.train.is_images());
    assert_eq!((u8s.train.len(), u8s.test.len(), u8s.train.shape(), u8s.classes()), (300, 100, (28, 28), 10));
    assert!(u8s.describe().contains("(300 train / 100 test images, 28x28, 10 classes)"), "{}", u8s.describe());
    // The same images as IDX files.
    let d = tempfile::tempdir().unwrap();
    write_idx(d.path(), "train-images-idx3-ubyte", &[300, 28, 28], u8s.train.pixels());
    write_idx(d.path(), "train-labels-idx1-ubyte", &[300], u8s.train.labels());
    write_idx(d.path(), "t10k-images-idx3-ubyte", &[100, 28, 28], u8s.test.pixels());
    write_idx(d.path(), "t10k-labels-idx1-ubyte", &[100], u8s.test.labels());
    let mut tensors = Vec::new();
    for (name, data) in [
        ("idx", d.path().to_path_buf()),
        ("u8", fixture("mnist-small.npz")),
        ("f32", fixture("mnist-small-f32.npz")),
        ("f64-onehot", fixture("mnist-small-f64-onehot.npz")),
    ] {
        let out = d.path().join(format!("{name}.safetensors"));
        let o = train(&data, &out, &[]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let (params, _) = kiln::checkpoint::load(&out).unwrap();
        tensors.push((name, params));
    }
    for (name, p) in &tensors[1..] {
        assert_eq!(p.values(), tensors[0].1.values(), "{name} differs from the IDX files' tensors");
    }
    // The float forms were recognized as pixels (k / 255) and kept as such.
    for f in ["mnist-small-f32.npz", "mnist-small-f64-onehot.npz"] {
        let ds = Dataset::load_npz(&fixture(f)).unwrap();
        assert!(ds.train.is_images() && ds.test.is_images(), "{f}");
        assert_eq!(ds.train.pixels(), u8s.train.pixels(), "{f}");
        assert_eq!(ds.test.labels(), u8s.test.labels(), "{f}");
    }
}

#[test]
fn standardized_features_train_through_the_f32_path() {
    let ds = Dataset::load_npz(&fixture("mnist-small-std.npz")).unwrap();
    assert!(!ds.train.is_images() && ds.train.pixels().is_empty());
    assert_eq!(ds.train.shape(), (1, 784));
    assert!(ds.describe().contains("300 train / 100 test samples, 784 f32 features"), "{}", ds.describe());
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.safetensors");
    let o = train(&fixture("mnist-small-std.npz"), &out, &["--epochs", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    // 300 training samples: far from MNIST's accuracy, far above chance.
    assert!(last["test_acc"].as_f64().unwrap() > 0.6, "{last}");
    // `predict --npy` classifies rows of features as the library does.
    let rows: Vec<f32> = match ds.test.inputs() {
        kiln::model::Inputs::Features(x) => x[..5 * 784].to_vec(),
        kiln::model::Inputs::Pixels(_) => unreachable!("features"),
    };
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let npy_path = d.path().join("rows.npy");
    std::fs::write(&npy_path, npy("<f4", "(5, 784)", &bytes)).unwrap();
    let p = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--model", out.to_str().unwrap(), "--npy", npy_path.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let (params, _) = kiln::checkpoint::load(&out).unwrap();
    let want = kiln::model::predict(kiln_kernels::select("auto").unwrap(), &params, &rows).unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&p.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    for (i, (l, w)) in lines.iter().zip(&want).enumerate() {
        let got: Vec<f32> = l["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(&got, w, "row {i}");
        assert!(l["file"].as_str().unwrap().ends_with(&format!("rows.npy[{i}]")));
    }
    let bad = d.path().join("bad.npy");
    std::fs::write(&bad, npy("<f4", "(2, 3)", &[0; 24])).unwrap();
    let p = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--model", out.to_str().unwrap(), "--npy", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&p.stderr);
    assert!(
        !p.status.success() && err.contains("bad.npy: rows of 3 values (shape [2, 3]), but the model reads 784"),
        "{err}"
    );
    // --errors draws images, which features are not.
    let o = train(&fixture("mnist-small-std.npz"), &out, &["--errors", d.path().join("e.png").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("holds f32 features, not images"), "{err}");
}

/// A `.npy` v1.0 array.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

/// A stored (uncompressed) zip archive of `entries`, with CRCs.
fn zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let at = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
            v.extend_from_slice(&crc.sum().to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&[0, 0]);
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0]);
        common(&mut central);
        central.extend_from_slice(&[0; 8]); // comment, disk, attributes
        central.extend_from_slice(&[0; 2]);
        central.extend_from_slice(&at.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let n = entries.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_at.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn malformed_archives_are_one_line_errors_naming_file_and_array() {
    let d = tempfile::tempdir().unwrap();
    let x = npy("|u1", "(2, 2)", &[0, 1, 2, 3]);
    let y = npy("|u1", "(2,)", &[0, 1]);
    let base =
        [("x_train.npy", x.clone()), ("y_train.npy", y.clone()), ("x_test.npy", x.clone()), ("y_test.npy", y.clone())];
    let ok = d.path().join("ok.npz");
    std::fs::write(&ok, zip(&base)).unwrap();
    let ds = Dataset::load_npz(&ok).unwrap();
    assert_eq!((ds.train.len(), ds.train.width(), ds.train.shape()), (2, 2, (1, 2)));
    let with = |i: usize, entry: (&'static str, Vec<u8>)| {
        let mut v = base.to_vec();
        v[i] = entry;
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("missing", zip(&base[..3]), "no array `y_test`; expected x_train, y_train, x_test and y_test"),
        ("extra", zip(&[base.to_vec(), vec![("z.npy", y.clone())]].concat()), "unexpected array `z`"),
        ("not npy", zip(&with(0, ("x_train.txt", x.clone()))), "entry `x_train.txt` is not a .npy array"),
        (
            "labels",
            zip(&with(1, ("y_train.npy", npy("|u1", "(3,)", &[0, 1, 2])))),
            "array `y_train`: 3 labels for 2 samples",
        ),
        (
            "dtype",
            zip(&with(0, ("x_train.npy", npy("<i4", "(2, 1)", &[0; 8])))),
            "array `x_train`: int32 samples; expected uint8",
        ),
        (
            "shape",
            zip(&with(0, ("x_train.npy", npy("|u1", "(4,)", &[0; 4])))),
            "array `x_train`: shape [4]; expected (samples, ...)",
        ),
        (
            "width",
            zip(&with(2, ("x_test.npy", npy("|u1", "(2, 3)", &[0; 6])))),
            "x_test holds 3 values per sample, but x_train holds 2",
        ),
        (
            "nan",
            zip(&with(0, ("x_train.npy", npy("<f4", "(2, 1)", &[0, 0, 0xc0, 0x7f, 0, 0, 0, 0])))),
            "array `x_train`: value 0 is NaN",
        ),
        ("short", zip(&base)[..60].to_vec(), "not a valid .npz (zip) archive"),
        ("empty", Vec::new(), "not a valid .npz (zip) archive"),
    ];
    for (what, bytes, want) in cases {
        let p = d.path().join(format!("{what}.npz"));
        std::fs::write(&p, bytes).unwrap();
        let e = kiln::error_line(&Dataset::load_npz(&p).unwrap_err());
        assert!(e.contains(&format!("{what}.npz")) && e.contains(want) && !e.contains('\n'), "{what}: {e}");
    }
    // Bool samples: True is 1.0, the pixel 255.
    let b = npy("|b1", "(2, 2)", &[1, 0, 0, 1]);
    let bools = d.path().join("bool.npz");
    std::fs::write(&bools, zip(&with(0, ("x_train.npy", b)))).unwrap();
    assert_eq!(Dataset::load_npz(&bools).unwrap().train.pixels(), [255, 0, 0, 255]);
    // x_train that is all k/255 beside x_test that is not: both are features.
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let exact = npy("<f4", "(2, 2)", &f(&[0.0, 1.0, 128.0 / 255.0, 0.0]));
    let other = npy("<f4", "(2, 2)", &f(&[0.5, 1.0, 0.0, 0.0]));
    let mixed = d.path().join("mixed.npz");
    let entries =
        [("x_train.npy", exact), ("y_train.npy", y.clone()), ("x_test.npy", other), ("y_test.npy", y.clone())];
    std::fs::write(&mixed, zip(&entries)).unwrap();
    let ds = Dataset::load_npz(&mixed).unwrap();
    assert!(!ds.train.is_images() && !ds.test.is_images());
    match ds.train.inputs() {
        kiln::model::Inputs::Features(x) => assert_eq!(x, [0.0, 1.0, 128.0 / 255.0, 0.0]),
        kiln::model::Inputs::Pixels(_) => panic!("x_train should be features"),
    }
    // A flipped bit in a stored array: the CRC catches it.
    let mut bytes = zip(&base);
    let at = bytes.windows(4).position(|w| w == [0, 1, 2, 3]).unwrap();
    bytes[at] ^= 1;
    let p = d.path().join("crc.npz");
    std::fs::write(&p, bytes).unwrap();
    let e = kiln::error_line(&Dataset::load_npz(&p).unwrap_err());
    assert!(e.contains("crc.npz: array `x_train`: CRC-32 mismatch"), "{e}");
    // And the CLI says the same, in one line, writing nothing.
    let out = d.path().join("m.safetensors");
    let o = train(&d.path().join("labels.npz"), &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("3 labels for 2 samples") && !out.exists(), "{err}");
}
