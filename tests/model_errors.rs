//! Model files: the round trip of good ones (any depth, deterministic
//! bytes, the first format still read), and every malformed file `load` and
//! `load_init` must reject, each with a one-line error naming the file and
//! what is wrong.

use kiln::checkpoint::{load, load_init, save, serialize, FORMAT, FORMAT_V1};
use kiln::model::{Arch, Params};
use kiln::rng::{Rng, Stream};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The hidden width of the hand-written first-format files.
const H: usize = 8;

/// A tensor as the test files are written: name, dtype, shape, bytes.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(n: usize, v: f32) -> Vec<u8> {
    (0..n).flat_map(|_| v.to_le_bytes()).collect()
}

/// `n` distinct values tagged by `tag` (so a value read into the wrong
/// tensor or position shows).
fn pattern(n: usize, tag: usize) -> Vec<f32> {
    (0..n).map(|i| tag as f32 + i as f32 / 65536.0).collect()
}

fn tensor(name: &str, shape: &[usize], values: &[f32]) -> Tensor {
    (name.to_string(), Dtype::F32, shape.to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A model file at `dir/m.safetensors` written by the safetensors crate
/// (as another tool would write it), with the given tensors and metadata
/// (`None`: no metadata at all).
fn write(dir: &Path, tensors: &[Tensor], meta: Option<&[(&str, &str)]>) -> PathBuf {
    let views: Vec<(&str, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta: Option<HashMap<String, String>> =
        meta.map(|m| m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let bytes = safetensors::serialize(views, meta).unwrap();
    let p = dir.join("m.safetensors");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The tensors of a first-format file: 784 -> H relu -> 10 softmax.
fn v1_tensors() -> Vec<Tensor> {
    vec![
        ("dense_1.kernel".into(), Dtype::F32, vec![784, H], f32_bytes(784 * H, 0.5)),
        ("dense_1.bias".into(), Dtype::F32, vec![H], f32_bytes(H, 0.0)),
        ("dense_2.kernel".into(), Dtype::F32, vec![H, 10], f32_bytes(H * 10, -0.25)),
        ("dense_2.bias".into(), Dtype::F32, vec![10], f32_bytes(10, 0.0)),
    ]
}

const V1_META: &[(&str, &str)] = &[("format", "kiln-mlp-v1"), ("hidden", "8")];

/// The architecture `load_init` is asked for: three Dense layers.
fn init_arch() -> Arch {
    Arch::parse("12:tanh,8:relu", 784, 10).unwrap()
}

/// Tensors `dense_1 .. dense_n` with kernels of the `(in, out)` shapes
/// given, each tensor holding its own [`pattern`].
fn layers(shapes: &[(usize, usize)]) -> Vec<Tensor> {
    let mut v = Vec::new();
    for (l, &(i, o)) in shapes.iter().enumerate() {
        v.push(tensor(&format!("dense_{}.kernel", l + 1), &[i, o], &pattern(i * o, 2 * l)));
        v.push(tensor(&format!("dense_{}.bias", l + 1), &[o], &pattern(o, 2 * l + 1)));
    }
    v
}

/// `init_arch`'s tensors.
fn init_tensors() -> Vec<Tensor> {
    layers(&[(784, 12), (12, 8), (8, 10)])
}

/// Glorot kernels and non-zero biases for `spec`.
fn params(spec: &str, inputs: usize, classes: usize, seed: u64) -> Params<f32> {
    let arch = Arch::parse(spec, inputs, classes).unwrap();
    let mut p = Params::<f32>::glorot(&arch, seed);
    let mut rng = Rng::new(seed, Stream::Shuffle(3));
    for l in 0..arch.dense().len() {
        for b in p.bias_mut(l) {
            *b = rng.next_f64() as f32 - 0.5;
        }
    }
    p
}

/// Checks that `e` names `p` and is one line.
fn one_line(e: anyhow::Error, p: &Path) -> String {
    let e = format!("{e:#}");
    assert!(e.contains(&p.display().to_string()), "error does not name the file: {e}");
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

/// `load`'s error for `p`.
fn error(p: &Path) -> String {
    one_line(load(p).expect_err("must be rejected"), p)
}

/// `load_init`'s error for `p` and [`init_arch`].
fn init_error(p: &Path) -> String {
    one_line(load_init(p, &init_arch()).expect_err("must be rejected"), p)
}

fn assert_contains(e: &str, want: &str) {
    assert!(e.contains(want), "expected {want:?} in: {e}");
}

/// The keys of `__metadata__` in the order the file's JSON header lists
/// them, and each tensor's `data_offsets`.
fn header(path: &Path) -> (Vec<String>, BTreeMap<String, (usize, usize)>) {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "the data does not start 8-byte aligned");
    let json = &bytes[8..8 + n];
    // The metadata object as the file spells it (its values hold no braces).
    let start = find(json, b"\"__metadata__\":") + b"\"__metadata__\":".len();
    let end = start + find(&json[start..], b"}") + 1;
    let keys = serde_json::Deserializer::from_slice(&json[start..end]).deserialize_map(Keys).unwrap();
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    let offsets = value
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize))
        })
        .collect();
    (keys, offsets)
}

/// Where `needle` first occurs in `hay` (it must).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{} not in the header", String::from_utf8_lossy(needle)))
}

#[test]
fn a_saved_model_loads_back_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    let params = params("8:relu", 784, 10, 3);
    save(&p, &params, &Default::default()).unwrap();
    let (back, meta) = load(&p).unwrap();
    assert_eq!(back, params);
    let want: BTreeMap<String, String> =
        [("format", FORMAT), ("layers", "8:relu,10:softmax"), ("inputs", "784"), ("classes", "10")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(meta, want);
    assert_eq!(load_init(&p, params.arch()).unwrap(), params);
}

#[test]
fn a_first_format_file_written_by_hand_still_loads() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), &v1_tensors(), Some(V1_META));
    let (back, meta) = load(&p).unwrap();
    assert_eq!(back.arch(), &Arch::parse("8:relu,10:softmax", 784, 10).unwrap());
    assert!(back.kernel(0).iter().all(|&v| v == 0.5) && back.kernel(1).iter().all(|&v| v == -0.25));
    assert!(back.bias(0).iter().chain(back.bias(1)).all(|&v| v == 0.0));
    assert_eq!((meta["format"].as_str(), meta["hidden"].as_str()), (FORMAT_V1, "8"));
    // Saved again, it is a file of the current format with the same weights.
    let q = d.path().join("again.safetensors");
    save(&q, &back, &meta).unwrap();
    let (again, meta) = load(&q).unwrap();
    assert_eq!(again, back);
    assert_eq!((meta["format"].as_str(), meta["layers"].as_str()), (FORMAT, "8:relu,10:softmax"));
}

#[test]
fn three_layer_models_round_trip_identically() {
    let d = tempfile::tempdir().unwrap();
    for (spec, inputs, classes) in [("12:tanh,8:sigmoid", 784, 10), ("32:relu,16:linear", 100, 26)] {
        let p = d.path().join(format!("{inputs}.safetensors"));
        let params = params(spec, inputs, classes, 5);
        assert_eq!(params.arch().dense().len(), 3);
        let extra: BTreeMap<String, String> =
            [("seed", "5"), ("epochs", "2")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        save(&p, &params, &extra).unwrap();
        let (back, meta) = load(&p).unwrap();
        assert_eq!(back, params, "{spec}");
        assert_eq!(
            back.values().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            params.values().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(meta["layers"], format!("{spec},{classes}:softmax"));
        assert_eq!((meta["inputs"].clone(), meta["classes"].clone()), (inputs.to_string(), classes.to_string()));
        assert_eq!((meta["seed"].as_str(), meta["epochs"].as_str(), meta["format"].as_str()), ("5", "2", FORMAT));
        assert_eq!(load_init(&p, params.arch()).unwrap(), params, "{spec}");
        // The file's tensors are the model's, by name and shape, for any reader.
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, shape, values) in params.named_tensors() {
            let t = st.tensor(&name).unwrap();
            assert_eq!((t.dtype(), t.shape()), (Dtype::F32, shape.as_slice()), "{name}");
            assert_eq!(t.data(), values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(), "{name}");
        }
    }
}

#[test]
fn saving_twice_gives_identical_bytes_with_sorted_metadata() {
    let d = tempfile::tempdir().unwrap();
    let params = params("12:tanh,8:sigmoid,6:linear", 784, 10, 9);
    let mut extra = BTreeMap::new();
    for (k, v) in [("zeta", "last"), ("test_accuracy", "0.9"), ("alpha", "first"), ("seed", "9"), ("epochs", "1")] {
        extra.insert(k.to_string(), v.to_string());
    }
    let (a, b) = (d.path().join("a.safetensors"), d.path().join("b.safetensors"));
    save(&a, &params, &extra).unwrap();
    save(&b, &params, &extra).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert!(bytes == std::fs::read(&b).unwrap(), "two saves of the same model differ");
    // Saving over an existing file gives the same bytes again.
    save(&a, &params, &extra).unwrap();
    assert!(bytes == std::fs::read(&a).unwrap(), "a save over the file differs");
    let (keys, offsets) = header(&a);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "metadata keys not sorted");
    assert_eq!(keys, ["alpha", "classes", "epochs", "format", "inputs", "layers", "seed", "test_accuracy", "zeta"]);
    // The data is laid out in layer order (kernel, then bias), contiguously.
    let mut at = 0;
    for (name, _, values) in params.named_tensors() {
        assert_eq!(offsets[&name], (at, at + 4 * values.len()), "{name}");
        at += 4 * values.len();
    }
    assert_eq!(offsets.len(), 8);
    let meta = load(&a).unwrap().1;
    assert!(
        bytes == serialize(&params.named_tensors(), &meta),
        "the file is not `serialize` of its model and metadata"
    );
    // A `format` passed in the extra metadata cannot mislabel the file.
    extra.insert("format".into(), "kiln-mlp-v1".into());
    save(&b, &params, &extra).unwrap();
    assert_eq!(load(&b).unwrap().1["format"], FORMAT);
}

#[test]
fn unreadable_not_safetensors_short_and_truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    assert_contains(&error(&p), "cannot read the model file");
    assert_contains(&init_error(&p), "cannot read the initial weights file");
    std::fs::write(&p, b"abc").unwrap();
    assert_contains(&error(&p), "not a safetensors file: 3 bytes, too short");
    assert_contains(&init_error(&p), "too short");
    std::fs::write(&p, b"this is a text file, not a model").unwrap();
    assert_contains(&error(&p), "not a safetensors file");
    assert_contains(&init_error(&p), "not a safetensors file");
    let good = std::fs::read(write(d.path(), &v1_tensors(), Some(V1_META))).unwrap();
    std::fs::write(&p, &good[..good.len() - 10]).unwrap();
    assert_contains(&error(&p), "truncated: the tensors' data ends past the end of the file");
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
fn unknown_duplicate_missing_and_extra_tensors() {
    let d = tempfile::tempdir().unwrap();
    for name in ["optimizer.velocity", "dense_0.kernel", "dense_1.weights"] {
        let mut t = v1_tensors();
        t.push(tensor(name, &[1], &[0.0]));
        assert_contains(&error(&write(d.path(), &t, Some(V1_META))), &format!("unknown tensor `{name}`"));
    }
    let mut t = v1_tensors();
    t.remove(3);
    assert_contains(&error(&write(d.path(), &t, Some(V1_META))), "tensor `dense_2.bias` is missing");
    let mut t = v1_tensors();
    t.remove(0);
    assert_contains(
        &error(&write(d.path(), &t, Some(V1_META))),
        "tensor `dense_1.kernel` is missing (the file has layers up to dense_2)",
    );
    assert_contains(&error(&write(d.path(), &[], Some(V1_META))), "holds no tensors");
    let mut t = v1_tensors();
    t.extend([tensor("dense_3.kernel", &[10, 10], &[0.0; 100]), tensor("dense_3.bias", &[10], &[0.0; 10])]);
    assert_contains(
        &error(&write(d.path(), &t, Some(V1_META))),
        "holds 3 layers (dense_1 .. dense_3), but the model 8:relu,10:softmax has 2",
    );
    // Duplicate: rename a key in the JSON header to repeat another.
    let p = write(d.path(), &v1_tensors(), Some(V1_META));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap().replace("dense_1.bias", "dense_2.bias");
    bytes[8..8 + n].copy_from_slice(header.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_contains(&error(&p), "tensor `dense_2.bias` appears twice");
}

#[test]
fn wrong_dtype_shape_width_and_values() {
    let d = tempfile::tempdir().unwrap();
    let mut t = v1_tensors();
    t[1] = ("dense_1.bias".into(), Dtype::F64, vec![H], vec![0; H * 8]);
    assert_contains(&error(&write(d.path(), &t, Some(V1_META))), "tensor `dense_1.bias` has dtype F64, expected F32");
    let mut t = v1_tensors();
    t[0].2 = vec![H, 784];
    assert_contains(
        &error(&write(d.path(), &t, Some(V1_META))),
        "tensor `dense_2.kernel` has shape [8, 10], but dense_1.kernel has 784 outputs: the shapes do not chain",
    );
    let mut t = v1_tensors();
    t[0].2 = vec![784, H, 1];
    assert_contains(
        &error(&write(d.path(), &t, Some(V1_META))),
        "tensor `dense_1.kernel` has shape [784, 8, 1]; expected 2 dimensions [in, out]",
    );
    // A transposed kernel (of a one-layer model, so the shapes chain).
    let one = [("format", FORMAT), ("layers", "10:softmax"), ("inputs", "784"), ("classes", "10")];
    let t = [tensor("dense_1.kernel", &[10, 784], &[0.0; 7840]), tensor("dense_1.bias", &[10], &[0.0; 10])];
    let e = error(&write(d.path(), &t, Some(&one)));
    assert_contains(&e, "tensor `dense_1.kernel` has shape [10, 784], expected [784, 10] for the layers 10:softmax");
    assert_contains(&e, "(transposed? kernels are stored [in, out])");
    // The metadata's width is not the tensors'.
    let e = error(&write(d.path(), &v1_tensors(), Some(&[("format", "kiln-mlp-v1"), ("hidden", "16")])));
    assert_contains(
        &e,
        "tensor `dense_1.kernel` has shape [784, 8], expected [784, 16] for the layers 16:relu,10:softmax on 784 inputs",
    );
    let new = [("format", FORMAT), ("layers", "8:relu,10:softmax"), ("inputs", "784"), ("classes", "10")];
    assert!(load(&write(d.path(), &v1_tensors(), Some(&new))).is_ok());
    let e = error(&write(d.path(), &v1_tensors(), Some(&[new[0], ("layers", "9:relu"), new[2], new[3]])));
    assert_contains(&e, "expected [784, 9] for the layers 9:relu,10:softmax");
    let mut t = v1_tensors();
    t[3].3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_contains(
        &error(&write(d.path(), &t, Some(V1_META))),
        "tensor `dense_2.bias` holds a non-finite value (NaN) at flat index 2",
    );
    let mut t = v1_tensors();
    t[0].3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_contains(&error(&write(d.path(), &t, Some(V1_META))), "non-finite value (inf) at flat index 0");
}

#[test]
fn metadata_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let t = v1_tensors();
    let e = error(&write(d.path(), &t, Some(&[("hidden", "8")])));
    assert_contains(&e, "metadata `format` is missing, expected \"kiln-sequential-v1\" (or \"kiln-mlp-v1\")");
    assert_contains(&error(&write(d.path(), &t, None)), "metadata `format` is missing");
    let e = error(&write(d.path(), &t, Some(&[("format", "kiln-mlp-v2")])));
    assert_contains(&e, "metadata `format` is \"kiln-mlp-v2\"");
    let e = error(&write(d.path(), &t, Some(&[("format", "kiln-mlp-v1"), ("hidden", "eight")])));
    assert_contains(&e, "metadata `hidden` is \"eight\", expected a positive integer");
    let e = error(&write(d.path(), &t, Some(&[("format", "kiln-mlp-v1")])));
    assert_contains(&e, "metadata `hidden` is missing, expected a positive integer");
    let (f, l, i, c) = (("format", FORMAT), ("layers", "8:relu"), ("inputs", "784"), ("classes", "10"));
    assert_contains(&error(&write(d.path(), &t, Some(&[f, i, c]))), "metadata `layers` is missing");
    assert_contains(
        &error(&write(d.path(), &t, Some(&[f, l, c]))),
        "metadata `inputs` is missing, expected a positive integer",
    );
    let e = error(&write(d.path(), &t, Some(&[f, l, ("inputs", "0"), c])));
    assert_contains(&e, "metadata `inputs` is \"0\", expected a positive integer");
    assert_contains(&error(&write(d.path(), &t, Some(&[f, l, i]))), "metadata `classes` is missing");
    let e = error(&write(d.path(), &t, Some(&[f, ("layers", "8:gelu"), i, c])));
    assert_contains(&e, "metadata `layers`: ");
    assert_contains(&e, "unknown activation `gelu`");
    let e = error(&write(d.path(), &t, Some(&[f, ("layers", "8:relu,10:softmax"), i, ("classes", "12")])));
    assert_contains(&e, "the output layer has 10 units, but the data has 12 classes");
    // `load_init` checks metadata only when it names layers.
    let e = init_error(&write(d.path(), &init_tensors(), Some(&[f, ("layers", "12:tanh,8:sigmoid,10:softmax")])));
    assert_contains(
        &e,
        "its metadata names the layers 12:tanh,8:sigmoid,10:softmax, but this run trains 12:tanh,8:relu,10:softmax",
    );
    assert!(load_init(&write(d.path(), &init_tensors(), Some(&[("seed", "1")])), &init_arch()).is_ok());
}

#[test]
fn load_init_accepts_a_file_without_metadata() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), &init_tensors(), None);
    let got = load_init(&p, &init_arch()).unwrap();
    let mut want = Vec::new();
    for (l, (i, o)) in [(784, 12), (12, 8), (8, 10)].into_iter().enumerate() {
        want.extend(pattern(i * o, 2 * l));
        want.extend(pattern(o, 2 * l + 1));
    }
    assert_eq!(got, Params::from_vec(&init_arch(), want).unwrap());
    assert_eq!(got.kernel(2)[7], 4.0 + 7.0 / 65536.0);
    // `load` needs the metadata that says what the file is.
    assert_contains(&error(&p), "metadata `format` is missing");
}

#[test]
fn load_init_rejects_missing_extra_and_misshapen_layers_and_bad_values() {
    let d = tempfile::tempdir().unwrap();
    let write = |t: &[Tensor]| write(d.path(), t, None);
    // dense_2 absent.
    let t: Vec<Tensor> = init_tensors().into_iter().filter(|t| !t.0.starts_with("dense_2.")).collect();
    assert_contains(&init_error(&write(&t)), "tensor `dense_2.kernel` is missing (the file has layers up to dense_3)");
    let t: Vec<Tensor> = init_tensors().into_iter().filter(|t| t.0 != "dense_2.bias").collect();
    assert_contains(&init_error(&write(&t)), "tensor `dense_2.bias` is missing");
    // An extra layer dense_4, and one too few.
    let need = "but the layers 12:tanh,8:relu,10:softmax on 784 inputs need 784x12, 12x8, 8x10";
    let e = init_error(&write(&layers(&[(784, 12), (12, 8), (8, 10), (10, 10)])));
    assert_contains(&e, &format!("its kernels are 784x12, 12x8, 8x10, 10x10 (in x out), {need}"));
    let e = init_error(&write(&layers(&[(784, 12), (12, 10)])));
    assert_contains(&e, &format!("its kernels are 784x12, 12x10 (in x out), {need}"));
    // Shapes that do not chain.
    let e = init_error(&write(&layers(&[(784, 12), (13, 8), (8, 10)])));
    assert_contains(
        &e,
        "tensor `dense_2.kernel` has shape [13, 8], but dense_1.kernel has 12 outputs: the shapes do not chain",
    );
    // Shapes that chain but are not the requested arch's: widths, inputs, classes.
    for (shapes, got) in [
        ([(784, 16), (16, 8), (8, 10)], "784x16, 16x8, 8x10"),
        ([(100, 12), (12, 8), (8, 10)], "100x12, 12x8, 8x10"),
        ([(784, 12), (12, 8), (8, 26)], "784x12, 12x8, 8x26"),
    ] {
        assert_contains(&init_error(&write(&layers(&shapes))), &format!("its kernels are {got} (in x out), {need}"));
    }
    // A bias of the wrong width, a wrong dtype.
    let mut t = init_tensors();
    t[3] = tensor("dense_2.bias", &[7], &[0.0; 7]);
    assert_contains(
        &init_error(&write(&t)),
        "tensor `dense_2.bias` has shape [7], expected [8] for the layers 12:tanh,8:relu,10:softmax on 784 inputs",
    );
    let mut t = init_tensors();
    t[4] = ("dense_3.kernel".into(), Dtype::F16, vec![8, 10], vec![0; 160]);
    assert_contains(&init_error(&write(&t)), "tensor `dense_3.kernel` has dtype F16, expected F32");
    // Non-finite values.
    let mut t = init_tensors();
    t[4].3[20..24].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    assert_contains(&init_error(&write(&t)), "tensor `dense_3.kernel` holds a non-finite value (-inf) at flat index 5");
    let mut t = init_tensors();
    t[1].3[44..48].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_contains(&init_error(&write(&t)), "tensor `dense_1.bias` holds a non-finite value (NaN) at flat index 11");
    // A tensor that is no layer's.
    let mut t = init_tensors();
    t.push(tensor("dense_2.gamma", &[8], &[1.0; 8]));
    assert_contains(&init_error(&write(&t)), "unknown tensor `dense_2.gamma`");
}

/// A few hundred bytes whose metadata names a 4-billion-parameter model
/// are refused from their tensors' shapes before anything of that size is
/// allocated.
#[test]
fn tiny_files_cannot_ask_for_huge_allocations() {
    let d = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = vec![
        ("dense_1.kernel".into(), Dtype::F32, vec![1, 1], f32_bytes(1, 0.5)),
        ("dense_1.bias".into(), Dtype::F32, vec![1], f32_bytes(1, 0.0)),
        ("dense_2.kernel".into(), Dtype::F32, vec![1, 10], f32_bytes(10, 0.5)),
        ("dense_2.bias".into(), Dtype::F32, vec![10], f32_bytes(10, 0.0)),
    ];
    let meta = [
        ("format", "kiln-sequential-v1"),
        ("layers", "1000000:relu,10:softmax"),
        ("inputs", "4000"),
        ("classes", "10"),
    ];
    let p = write(d.path(), &tensors, Some(&meta));
    assert!(std::fs::metadata(&p).unwrap().len() < 1000);
    let e = error(&p);
    assert!(e.contains("tensor `dense_1.kernel` has shape [1, 1], expected [4000, 1000000]"), "{e}");
}

/// A model of `spec` on 6 inputs and 3 classes trained `steps` Adam steps
/// on a fixed batch.
fn trained(spec: &str, steps: usize) -> kiln::model::Model<'static, f32> {
    let arch = Arch::parse(spec, 6, 3).unwrap();
    let be = kiln::kernels::select("auto").unwrap();
    let mut m = kiln::model::Model::new(be, &Params::glorot(&arch, 4), kiln::kernels::Adam::default()).unwrap();
    let pixels: Vec<u8> = (0..8 * 6).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..8).map(|i| (i % 3) as u8).collect();
    let rows: Vec<u32> = (0..8).collect();
    for _ in 0..steps {
        m.train_step(kiln::model::Batch { inputs: (&pixels[..]).into(), labels: &labels, rows: &rows }).unwrap();
    }
    m
}

#[test]
fn a_model_file_with_optimizer_state_resumes_training_exactly() {
    use kiln::checkpoint::{load_with_state, save_with_state, OptimizerState};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    let spec = "5:relu,dropout:0.3,4:tanh";
    let once = trained(spec, 3);
    let state = OptimizerState::of(&once);
    assert_eq!(state.iterations, 3);
    assert_eq!(state.slots.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["momentum", "velocity"]);
    save_with_state(&p, &once.params(), &state, &Default::default()).unwrap();
    let (params, meta, back) = load_with_state(&p).unwrap();
    assert_eq!((params.clone(), back.as_ref()), (once.params(), Some(&state)));
    assert_eq!(meta["iterations"], "3");
    // `load` reads the weights alone; `load_init` too.
    assert_eq!(load(&p).unwrap().0, params);
    assert_eq!(load_init(&p, params.arch()).unwrap(), params);
    // Restored into a fresh model, two more steps give the five-step model's
    // bits (Adam's bias correction counts the restored iterations, the
    // Dropout masks the step).
    let mut resumed = trained(spec, 0);
    resumed.set_params(&params);
    let back = back.unwrap();
    resumed.set_optimizer_state(back.iterations, &back.slots).unwrap();
    let pixels: Vec<u8> = (0..8 * 6).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..8).map(|i| (i % 3) as u8).collect();
    let rows: Vec<u32> = (0..8).collect();
    for _ in 0..2 {
        resumed.train_step(kiln::model::Batch { inputs: (&pixels[..]).into(), labels: &labels, rows: &rows }).unwrap();
    }
    assert_eq!(resumed.params(), trained(spec, 5).params());
    // A file without state has none.
    save(&p, &params, &Default::default()).unwrap();
    assert_eq!(load_with_state(&p).unwrap().2, None);
}

#[test]
fn bad_optimizer_state_in_a_model_file_is_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    let meta: &[(&str, &str)] =
        &[("format", FORMAT), ("layers", "8:relu,10:softmax"), ("inputs", "784"), ("classes", "10")];
    let with_iterations = [meta, &[("iterations", "7")]].concat();
    let slot = |name: &str| -> Vec<Tensor> {
        v1_tensors().into_iter().map(|(n, d, s, b)| (format!("optimizer.{name}.{n}"), d, s, b)).collect()
    };
    let good = [v1_tensors(), slot("velocity")].concat();
    assert!(kiln::checkpoint::load_with_state(&write(d.path(), &good, Some(&with_iterations))).is_ok());
    assert_contains(&error(&write(d.path(), &good, Some(meta))), "holds optimizer state but no metadata `iterations`");
    let bad_count = [meta, &[("iterations", "-1")]].concat();
    assert_contains(&error(&write(d.path(), &good, Some(&bad_count))), "metadata `iterations` is \"-1\"");
    let huge = [meta, &[("iterations", "18446744073709551615")]].concat();
    assert_contains(&error(&write(d.path(), &good, Some(&huge))), "expected a whole number up to 2^53");
    let mut missing = good.clone();
    missing.pop();
    assert_contains(
        &error(&write(d.path(), &missing, Some(&with_iterations))),
        "tensor `optimizer.velocity.dense_2.bias` is missing",
    );
    let mut extra = good.clone();
    extra.push(tensor("optimizer.velocity.dense_3.bias", &[10], &[0.0; 10]));
    assert_contains(
        &error(&write(d.path(), &extra, Some(&with_iterations))),
        "unknown tensor `optimizer.velocity.dense_3.bias`",
    );
    let mut shape = good.clone();
    shape[5] = tensor("optimizer.velocity.dense_1.bias", &[9], &[0.0; 9]);
    assert_contains(&error(&write(d.path(), &shape, Some(&with_iterations))), "expected F32 [8]");
    let mut nan = good;
    nan[5] = tensor("optimizer.velocity.dense_1.bias", &[8], &[f32::NAN; 8]);
    let p = write(d.path(), &nan, Some(&with_iterations));
    assert_contains(&error(&p), "non-finite value");
    // `--init` checks the state as well.
    let arch = Arch::parse("8:relu", 784, 10).unwrap();
    assert_contains(&one_line(load_init(&p, &arch).expect_err("must be rejected"), &p), "non-finite value");
}
