//! ONNX export checked by a runtime other than kiln: tract (`tract-onnx`)
//! loads each exported file and its probabilities on all 10,000 MNIST test
//! images are within 1e-5 of kiln's, with the same class for every image.
//! The networks: the tutorial's, 784-512-256-10 with tanh and sigmoid, and
//! Keras's mnist_mlp with Dropout (which exports as nothing). ONNX
//! Runtime's check of the same files is in python/tests (the test command
//! installs it from PyPI).

use kiln::data::Dataset;
use kiln::model::{Arch, Model, Params};
use kiln::train::{fit, Config, Samples};
use tract_onnx::prelude::*;

fn trained(spec: &str, ds: &Dataset) -> Params<f32> {
    let arch = Arch::parse(spec, 784, 10).unwrap();
    let be = kiln_kernels::select("auto").unwrap();
    let mut m = Model::new(be, &Params::glorot(&arch, 1), kiln_kernels::RmsProp::default()).unwrap();
    let cfg = Config { epochs: 1, steps_per_epoch: Some(100), ..Config::default() };
    fit(&mut m, Samples::from(&ds.train), &cfg, |_| {}, |_| {}).unwrap();
    m.params()
}

#[test]
fn tract_runs_the_exported_graph_as_kiln_predicts() {
    let ds = Dataset::load(&kiln::data::default_data_dir(), &kiln::data::default_cache_dir()).unwrap();
    let x: Vec<f32> = ds.test.pixels().iter().map(|&p| f32::from(p) / 255.0).collect();
    let n = ds.test.len();
    let d = tempfile::tempdir().unwrap();
    let specs = ["512:relu", "512:tanh,256:sigmoid,64:linear", "512:relu,dropout:0.2,512:relu,dropout:0.2"];
    // Every activation is exported and run (softmax: every output layer).
    for a in kiln::model::Activation::ALL {
        let named = |s: &&str| s.split(',').any(|l| l.ends_with(&format!(":{}", a.name())));
        assert!(a.name() == "softmax" || specs.iter().any(named), "no network here has {a}: add one");
    }
    for spec in specs {
        let params = trained(spec, &ds);
        let path = d.path().join("model.onnx");
        kiln::onnx::export(&path, &params, &Default::default()).unwrap();
        let want = kiln::model::predict(kiln_kernels::select("auto").unwrap(), &params, ds.test.pixels()).unwrap();
        let model = tract_onnx::onnx()
            .model_for_path(&path)
            .unwrap()
            .with_input_fact(0, f32::fact([n, 784]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let input: Tensor = tract_ndarray::Array2::from_shape_vec((n, 784), x.clone()).unwrap().into();
        let out = model.run(tvec!(input.into())).unwrap();
        let got = out[0].to_array_view::<f32>().unwrap();
        assert_eq!(got.shape(), &[n, 10], "{spec}");
        let (mut worst, mut differ) = (0f32, 0);
        for (i, w) in want.iter().enumerate() {
            let row: Vec<f32> = (0..10).map(|c| got[[i, c]]).collect();
            worst = row.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
            differ += usize::from(kiln_kernels::argmax(&row) != kiln_kernels::argmax(w));
        }
        eprintln!("{spec}: tract against kiln on {n} images: largest difference {worst:e}, {differ} classes differ");
        assert!(worst <= 1e-5, "{spec}: tract differs from kiln by {worst}");
        assert_eq!(differ, 0, "{spec}: {differ} images classified differently");
    }
}

#[test]
fn export_and_train_onnx_write_the_same_graph_and_refuse_bad_paths() {
    let d = tempfile::tempdir().unwrap();
    let (model, a, b) = (d.path().join("m.safetensors"), d.path().join("a.onnx"), d.path().join("b.onnx"));
    let run = |bin: &str, args: &[&std::path::Path], flags: &[&str]| {
        let mut c = std::process::Command::new(bin);
        for (f, p) in flags.iter().zip(args) {
            c.arg(f).arg(p);
        }
        c.args(["--epochs", "1"].iter().filter(|_| bin.ends_with("train"))).env_remove("KILN_BACKEND").output().unwrap()
    };
    let t = run(env!("CARGO_BIN_EXE_train"), &[&model, &a], &["--out", "--onnx"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(String::from_utf8_lossy(&t.stdout).contains(&format!("ONNX to {}", a.display())));
    let e = run(env!("CARGO_BIN_EXE_export"), &[&model, &b], &["--model", "--onnx"]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    // The same weights and graph; export adds the model file's provenance to the metadata.
    let graph = |p: &std::path::Path| {
        use onnx_protobuf::Message;
        let m = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(p).unwrap()).unwrap();
        m.graph.unwrap().write_to_bytes().unwrap()
    };
    assert_eq!(graph(&a), graph(&b));
    let same = run(env!("CARGO_BIN_EXE_export"), &[&model, &model], &["--model", "--onnx"]);
    assert!(String::from_utf8_lossy(&same.stderr).contains("is the model file itself"));
    let missing = run(env!("CARGO_BIN_EXE_export"), &[&d.path().join("no.safetensors"), &b], &["--model", "--onnx"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
