//! f32 feature inputs: the input layer reads them as a hidden layer reads
//! activations. MNIST as `pixel / 255` floats trains to the same bits as
//! the u8 pixels, through either path; standardized (dense, signed)
//! features train, predict and evaluate; and the f32 path matches the
//! scalar reference on every backend.

mod common;
use common::{backends_under_test, rel_err, Golden};
use kiln::model::{exact_pixels, Arch, Batch, Inputs, Model, Params, Predictor};
use kiln::train::{evaluate, fit, Config, Samples};
use kiln_kernels::{Backend, RmsProp};

fn mnist() -> (Vec<u8>, Vec<u8>) {
    let g = Golden::load();
    (g.u8("images"), g.u8("labels"))
}

/// `pixel / 255` in f32, as `astype("float32") / 255` gives it.
fn as_floats(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| f32::from(p) / 255.0).collect()
}

/// Twenty steps of 32 rows of `layers` on `inputs` from the Glorot weights of seed 7.
fn train(be: &dyn Backend<f32>, layers: &str, inputs: Inputs<'_>, labels: &[u8]) -> Params<f32> {
    train_shifted(be, layers, inputs, labels, false)
}

/// [`train`], with layer 1's features shifted (`Model::shift_features`)
/// when `shift`.
fn train_shifted(be: &dyn Backend<f32>, layers: &str, inputs: Inputs<'_>, labels: &[u8], shift: bool) -> Params<f32> {
    let arch = Arch::parse(layers, 784, 10).unwrap();
    let mut m = Model::new(be, &Params::glorot(&arch, 7), RmsProp::default()).unwrap().with_seed(3);
    if shift {
        assert!(m.shift_features(inputs), "{layers}: the features were not shifted");
    }
    let rows: Vec<u32> = (0..384).collect();
    for s in 0..20 {
        let r = &rows[(s * 32) % 384..(s * 32) % 384 + 32];
        m.train_step(Batch { inputs, labels, rows: r }).unwrap();
    }
    m.params()
}

#[test]
fn pixel_floats_train_to_the_pixels_bits_through_either_path() {
    let (images, labels) = mnist();
    let floats = as_floats(&images);
    assert_eq!(exact_pixels(&floats).as_deref(), Some(&images[..]), "k/255 floats map back to their pixels");
    for name in backends_under_test() {
        let be = kiln_kernels::select(name).unwrap();
        for layers in ["64:relu", "64:relu,dropout:0.2,32:tanh", "10:softmax"] {
            let u8_path = train(be, layers, Inputs::Pixels(&images), &labels);
            let f32_path = train(be, layers, Inputs::Features(&floats), &labels);
            let rel = rel_err(f32_path.values(), u8_path.values());
            eprintln!("{name} {layers}: f32 path against u8 path, relative error {rel:.2e}");
            // kiln's own kernels sum in the same order either way; OpenBLAS
            // only promises its own rounding.
            if name == "blas" {
                assert!(rel <= 5e-6, "{name} {layers}: {rel:.2e}");
            } else {
                assert_eq!(f32_path.values(), u8_path.values(), "{name} {layers}: the two paths differ");
            }
        }
    }
}

#[test]
fn the_feature_path_matches_the_scalar_reference_on_every_backend() {
    // Standardized features: dense, signed, not a pixel in sight.
    let (images, labels) = mnist();
    let x = standardized(&images);
    for layers in ["48:relu,dropout:0.1,24:sigmoid", "10:softmax"] {
        let want = train(kiln_kernels::select("scalar").unwrap(), layers, Inputs::Features(&x), &labels);
        for name in backends_under_test() {
            let got = train(kiln_kernels::select(name).unwrap(), layers, Inputs::Features(&x), &labels);
            let e = rel_err(got.values(), want.values());
            eprintln!("{name} {layers} on standardized features: relative error {e:.2e} against scalar");
            assert!(e <= 5e-6, "{name} {layers}: {e:.2e}");
        }
    }
}

/// Standardized MNIST shifted by each column's dark-pixel value: the same
/// training, up to rounding, on every backend.
#[test]
fn shifted_standardized_features_train_as_the_unshifted_ones() {
    let (images, labels) = mnist();
    let x = standardized(&images);
    let layers = "48:relu,dropout:0.1,24:sigmoid";
    let scalar = kiln_kernels::select("scalar").unwrap();
    let plain = train(scalar, layers, Inputs::Features(&x), &labels);
    let want = train_shifted(scalar, layers, Inputs::Features(&x), &labels, true);
    let e = rel_err(want.values(), plain.values());
    eprintln!("scalar {layers}: shifted against unshifted, relative error {e:.2e} after 20 steps");
    assert!(e <= 5e-6, "{e:.2e}");
    for name in backends_under_test() {
        let got = train_shifted(kiln_kernels::select(name).unwrap(), layers, Inputs::Features(&x), &labels, true);
        let e = rel_err(got.values(), want.values());
        eprintln!("{name} {layers} shifted: relative error {e:.2e} against scalar");
        assert!(e <= 5e-6, "{name} {layers}: {e:.2e}");
    }
    // A network without hidden layers, and pixels, are never shifted.
    let arch = Arch::parse("10:softmax", 784, 10).unwrap();
    let mut m = Model::new(scalar, &Params::glorot(&arch, 7), RmsProp::default()).unwrap();
    assert!(!m.shift_features(Inputs::Features(&x)));
    let arch = Arch::parse(layers, 784, 10).unwrap();
    let mut m = Model::new(scalar, &Params::glorot(&arch, 7), RmsProp::default()).unwrap();
    assert!(!m.shift_features(Inputs::Pixels(&images)));
    assert!(!m.shift_features(Inputs::Features(&as_floats(&images))), "k/255 floats are mostly 0 already");
}

/// The shift is exact algebra: in f64 the loss and every gradient of
/// shifted features are the unshifted ones to within f64 rounding, through
/// ReLU, Dropout, tanh and softmax.
#[test]
fn shifted_features_have_the_features_gradients_in_f64() {
    let (images, labels) = mnist();
    let x = standardized(&images);
    let arch = Arch::parse("32:relu,dropout:0.3,16:tanh", 784, 10).unwrap();
    let params: Params<f64> = Params::glorot(&arch, 5);
    let scalar = kiln_kernels::scalar::Scalar;
    let rows: Vec<u32> = (0..64).map(|i| i * 5 % 384).collect();
    let batch = Batch { inputs: Inputs::Features(&x), labels: &labels, rows: &rows };
    let run = |shift: bool| {
        let mut m = Model::new(&scalar, &params, RmsProp::default()).unwrap().with_seed(9);
        if shift {
            assert!(m.shift_features(Inputs::Features(&x)));
        }
        let stats = m.forward_backward(batch);
        (stats.loss_sum, m.grads())
    };
    let (loss, grads) = run(false);
    let (loss_shifted, grads_shifted) = run(true);
    assert!((loss - loss_shifted).abs() <= 1e-12 * loss.abs(), "{loss} vs {loss_shifted}");
    let (g, gs) = (grads.values(), grads_shifted.values());
    let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = g.iter().zip(gs).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    eprintln!("f64: loss {loss:e}, largest gradient difference {worst:.2e} of the largest gradient");
    assert!(worst <= 1e-12, "{worst:e}");
    assert!(g != gs, "the shift ran (its rounding differs somewhere)");
}

/// `(x - mean) / std` per column over the 384 images (std 1 where a column is constant).
fn standardized(pixels: &[u8]) -> Vec<f32> {
    let n = pixels.len() / 784;
    let mut out = vec![0f32; pixels.len()];
    for j in 0..784 {
        let col: Vec<f64> = (0..n).map(|i| f64::from(pixels[i * 784 + j]) / 255.0).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        for (i, v) in col.iter().enumerate() {
            out[i * 784 + j] = ((v - mean) / if sd > 0.0 { sd } else { 1.0 }) as f32;
        }
    }
    out
}

#[test]
fn standardized_features_fit_evaluate_and_predict() {
    let (images, labels) = mnist();
    let x = standardized(&images);
    let (train_x, test_x) = x.split_at(300 * 784);
    let train_set = Samples::features(train_x, &labels[..300], 784).unwrap();
    let test_set = Samples::features(test_x, &labels[300..], 784).unwrap();
    let arch = Arch::parse("64:relu", 784, 10).unwrap();
    let be = kiln_kernels::select("auto").unwrap();
    let mut model = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
    let cfg = Config { epochs: 10, batch_size: 32, ..Config::default() };
    let reports = fit(&mut model, train_set, &cfg, |_| {}, |_| {}).unwrap();
    // fit shifted layer 1's features by their dark-pixel values.
    assert!(model.shift_features(train_set.inputs()));
    assert!(reports[9].loss < reports[0].loss / 3.0, "{} -> {}", reports[0].loss, reports[9].loss);
    assert!(reports[9].acc > 0.95, "training accuracy {}", reports[9].acc);
    let eval = evaluate(&mut model, test_set).unwrap();
    // 300 training images: far from MNIST's accuracy, far above chance.
    assert!(eval.acc > 0.6, "test accuracy {}", eval.acc);
    // The predictor gives the model's probabilities, bit for bit.
    let probs = Predictor::new(be, &model.params(), 84).predict(test_x).unwrap();
    let rows: Vec<u32> = (0..84).collect();
    model.forward(Batch { inputs: Inputs::Features(test_x), labels: &labels[300..], rows: &rows });
    let flat: Vec<f32> = probs.concat();
    assert_eq!(flat, model.probs(84));
    let argmax = |p: &[f32]| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u8;
    assert_eq!(probs.iter().map(|p| argmax(p)).collect::<Vec<_>>(), eval.predicted);
}

#[test]
fn bad_feature_samples_are_errors_naming_what_is_wrong() {
    let e = |x: &[f32], labels: &[u8], w| Samples::features(x, labels, w).unwrap_err().to_string();
    assert!(e(&[1.0, f32::INFINITY], &[0], 2).contains("value 1 (row 0, column 1) is inf"));
    assert!(e(&[1.0, 2.0, 3.0], &[0, 1], 2).contains("3 values for 2 labels of 2-value rows; expected 4"));
    let model_arch = Arch::parse("4:relu", 3, 2).unwrap();
    let be = kiln_kernels::select("scalar").unwrap();
    let mut m = Model::new(be, &Params::glorot(&model_arch, 1), RmsProp::default()).unwrap();
    let s = Samples::features(&[0.0; 4], &[0, 1], 2).unwrap().named("x.npy");
    let err = evaluate(&mut m, s).unwrap_err().to_string();
    assert!(err.contains("x.npy: rows of 2 values, but the model reads 3"), "{err}");
    let p = Predictor::new(be, &Params::glorot(&model_arch, 1), 4).predict(&[0.5f32; 4]).unwrap_err().to_string();
    assert!(p.contains("4 values are not a whole number of rows of 3"), "{p}");
}
