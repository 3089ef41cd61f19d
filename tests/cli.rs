//! The `train` binary as a user runs it: flags, JSON output, errors, and that
//! a failed run writes nothing.

mod common;
use common::write_idx;
use kiln_kernels::Optimizer;
use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .env("KILN_CACHE_DIR", cache)
        .env_remove("KILN_BACKEND")
        .output()
        .expect("run train")
}

/// A small dataset (300 train, 100 test images) cut from the golden file's
/// real MNIST digits.
fn small_dataset(dir: &Path) {
    let g =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-rmsprop-h64.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&g).unwrap();
    let (img, lab) = (st.tensor("images").unwrap(), st.tensor("labels").unwrap());
    let write = |name: &str, dims: &[u32], data: &[u8]| {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
        v.extend_from_slice(data);
        std::fs::write(dir.join(name), v).unwrap();
    };
    write("train-images-idx3-ubyte", &[300, 28, 28], &img.data()[..300 * 784]);
    write("train-labels-idx1-ubyte", &[300], &lab.data()[..300]);
    write("t10k-images-idx3-ubyte", &[84, 28, 28], &img.data()[300 * 784..]);
    write("t10k-labels-idx1-ubyte", &[84], &lab.data()[300..]);
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn trains_a_small_dataset_with_json_output_and_writes_the_model() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let o = train(
        &["--data", d.path().to_str().unwrap(), "--epochs", "2", "--hidden", "32", "--batch-size", "64", "--json"]
            .iter()
            .copied()
            .chain(["--out", out.to_str().unwrap()])
            .collect::<Vec<_>>(),
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (e, l) in lines[..2].iter().enumerate() {
        assert_eq!(l["epoch"], e + 1);
        for key in ["loss", "acc", "seconds", "images_per_sec"] {
            assert!(l[key].as_f64().unwrap().is_finite(), "{key} in {l}");
        }
    }
    assert!(lines[1]["loss"].as_f64() < lines[0]["loss"].as_f64(), "loss did not fall: {stdout}");
    let last = &lines[2];
    for key in ["test_loss", "test_acc", "train_seconds"] {
        assert!(last[key].as_f64().unwrap().is_finite(), "{key} in {last}");
    }
    assert_eq!(last["backend"], kiln_kernels::select("auto").unwrap().name());
    assert!(last["threads"].as_u64().unwrap() >= 1);
    let (params, meta) = kiln::checkpoint::load(&out).unwrap();
    assert_eq!(params.arch().spec(), "32:relu,10:softmax");
    // Side outputs next to the model: metrics (one line per epoch, then the
    // test result with its confusion matrix) and the chart.
    let metrics = std::fs::read_to_string(d.path().join("m.metrics.jsonl")).unwrap();
    let m: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(m.len(), 3);
    assert_eq!(m[1]["epoch"], 2);
    let confusion = m[2]["confusion"].as_array().unwrap();
    let total: u64 = confusion.iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(total, 84, "every test image is counted once");
    let chart = image::open(d.path().join("m.training.png")).unwrap();
    assert_eq!((chart.width(), chart.height()), (720, 420));
    assert_eq!(meta["layers"], "32:relu,10:softmax");
    assert_eq!(meta["format"], "kiln-sequential-v1");
    assert!(stderr(&o).contains("| backend "), "banner goes to stderr with --json");
}

#[test]
fn invalid_flags_are_clear_errors_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.safetensors");
    let out_s = out.to_str().unwrap();
    for (flag, value, want) in [
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--epochs", "0", "--epochs must be at least 1"),
        ("--threads", "0", "--threads must be at least 1"),
        ("--hidden", "0", "--hidden must be at least 1"),
        ("--lr", "-0.1", "--lr must be a positive number"),
        ("--lr", "nan", "--lr must be a positive number"),
        ("--rho", "1.5", "--rho must be in [0, 1)"),
        ("--eps", "0", "--eps must be a positive number"),
        ("--backend", "gpu", "unknown backend `gpu`"),
        ("--epochs", "many", "invalid value 'many'"),
        ("--layers", "", "--layers: the layer list is empty"),
        ("--layers", "0:relu", "layer 1 has 0 units"),
        ("--layers", "64:swish", "unknown activation `swish`"),
        ("--layers", "10:softmax,64:relu", "layer 1 is softmax"),
        ("--layers", "64:relu,7:softmax", "the output layer has 7 units, but the data has 10 classes"),
        ("--layers", "99999999999:relu", "kiln can hold in memory"),
        ("--layers", "dropout:0.2,64:relu", "layer 1 is dropout; a Dropout must follow a Dense layer"),
        ("--layers", "64:relu,dropout:1", "layer 2 `dropout:1`: dropout rate 1 is outside [0, 1)"),
        ("--layers", "64:relu,dropout:-0.2", "dropout rate -0.2 is outside [0, 1)"),
        ("--layers", "64:relu,dropout:nan", "dropout rate NaN is outside [0, 1)"),
        ("--layers", "64:relu,dropout:x", "`x` is not a dropout rate"),
        ("--steps-per-epoch", "0", "--steps-per-epoch must be at least 1"),
        ("--optimizer", "lion", "unknown optimizer `lion`; expected one of rmsprop, sgd, adam, adamw"),
        ("--momentum", "-0.5", "--momentum must be in [0, 1)"),
        ("--weight-decay", "0.1", "--weight-decay is not an argument of --optimizer rmsprop (it belongs to adamw)"),
        ("--beta-1", "0.5", "--beta-1 is not an argument of --optimizer rmsprop (it belongs to adam, adamw)"),
        ("--nesterov", "--seed=1", "--nesterov is not an argument of --optimizer rmsprop (it belongs to sgd)"),
        ("--validation-split", "1.5", "--validation-split: the validation split must be a fraction in (0, 1)"),
        ("--early-stopping", "3", "--early-stopping watches val_loss: add --validation-split F or --validate-on-test"),
        ("--restore-best", "--seed=1", "the following required arguments were not provided"),
        ("--resume", "missing.ckpt", "missing.ckpt: cannot read the checkpoint"),
    ] {
        let o = train(&[flag, value, "--out", out_s], d.path());
        assert!(!o.status.success(), "{flag} {value} was accepted");
        assert!(stderr(&o).contains(want), "{flag} {value}: expected {want:?} in {}", stderr(&o));
        assert!(!out.exists(), "{flag} {value} wrote a model");
    }
    // Arguments another optimizer takes, and bad values of its own.
    for (args, want) in [
        (&["--optimizer", "sgd", "--eps", "1e-8"][..], "--eps is not an argument of --optimizer sgd"),
        (&["--optimizer", "sgd", "--rho", "0.5"], "--rho is not an argument of --optimizer sgd"),
        (&["--optimizer", "sgd", "--nesterov"], "--nesterov needs a momentum above 0"),
        (&["--optimizer", "adam", "--momentum", "0.9"], "--momentum is not an argument of --optimizer adam"),
        (&["--optimizer", "adam", "--beta-2", "1"], "--beta-2 must be in [0, 1) (got 1) (--optimizer adam)"),
        (&["--optimizer", "adam", "--weight-decay", "0.1"], "--weight-decay is not an argument of --optimizer adam"),
        (&["--optimizer", "adamw", "--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
        (&["--optimizer", "rmsprop", "--centered", "--momentum", "1"], "--momentum must be in [0, 1)"),
    ] {
        let o = train(&[args, &["--out", out_s]].concat(), d.path());
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(want), "{args:?}: expected {want:?} in {}", stderr(&o));
        assert!(!out.exists(), "{args:?} wrote a model");
    }
}

#[test]
fn bad_data_exits_nonzero_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    std::fs::write(d.path().join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 3]).unwrap();
    let out = d.path().join("m.safetensors");
    let o = train(&["--data", d.path().to_str().unwrap(), "--out", out.to_str().unwrap()], d.path());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("1 byte short"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_writes_no_model() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let o = train(
        &["--data", d.path().to_str().unwrap(), "--hidden", "16", "--lr", "1e30", "--out", out.to_str().unwrap()],
        d.path(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("the loss became NaN at epoch 1, step 2/3"), "{e}");
    assert!(e.contains("no model was written"), "{e}");
    assert!(!out.exists());
}

#[test]
fn an_existing_model_survives_a_failed_run() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    std::fs::write(&out, b"previous model").unwrap();
    let o = train(&["--data", d.path().to_str().unwrap(), "--lr", "1e30", "--out", out.to_str().unwrap()], d.path());
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous model");
}

#[test]
fn backend_flag_and_environment_choose_the_backend() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let args = ["--data", d.path().to_str().unwrap(), "--epochs", "1", "--hidden", "8", "--json"];
    let o = train(&[&args[..], &["--backend", "scalar", "--out", out.to_str().unwrap()]].concat(), d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"backend\":\"scalar\""));
    let o = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .args(["--out", out.to_str().unwrap()])
        .env("KILN_CACHE_DIR", d.path())
        .env("KILN_BACKEND", "no-such-isa")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown backend `no-such-isa`"), "{}", stderr(&o));
}

#[test]
fn confusion_and_error_pictures_are_written_on_request() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let (conf, errs) = (d.path().join("c.png"), d.path().join("e.png"));
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--out",
            d.path().join("m.safetensors").to_str().unwrap(),
            "--confusion",
            conf.to_str().unwrap(),
            "--errors",
            errs.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("confusion matrix (rows: true class, columns: predicted)"), "{stdout}");
    assert!(image::open(&conf).unwrap().width() > 500);
    assert!(image::open(&errs).unwrap().width() > 100, "a one-epoch tiny model misclassifies some digits");
}

#[test]
fn digit_shows_a_dataset_image_with_its_label() {
    let d = tempfile::tempdir().unwrap();
    let png = d.path().join("d.png");
    let o = Command::new(env!("CARGO_BIN_EXE_digit"))
        .args(["4", "--png", png.to_str().unwrap()])
        .env("KILN_CACHE_DIR", d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("train_images[4]: label 9"), "{stdout}");
    assert!(stdout.contains('█'));
    assert_eq!(image::open(&png).unwrap().width(), 280);
    let o = Command::new(env!("CARGO_BIN_EXE_digit"))
        .args(["--test", "10000"])
        .env("KILN_CACHE_DIR", d.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("index 10000 is out of range: the test set has 10000 images"), "{}", stderr(&o));

    // Any image size and label: 2 test images of 3x5, the second labelled 12.
    let data = d.path().join("small");
    std::fs::create_dir(&data).unwrap();
    let write = |name: &str, dims: &[u32], payload: &[u8]| {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
        v.extend_from_slice(payload);
        std::fs::write(data.join(name), v).unwrap();
    };
    let pixels: Vec<u8> = (0..30).map(|i| if i % 2 == 0 { 255 } else { 0 }).collect();
    write("train-images-idx3-ubyte", &[2, 3, 5], &pixels);
    write("train-labels-idx1-ubyte", &[2], &[0, 1]);
    write("t10k-images-idx3-ubyte", &[2, 3, 5], &pixels);
    write("t10k-labels-idx1-ubyte", &[2], &[3, 12]);
    let o = Command::new(env!("CARGO_BIN_EXE_digit"))
        .args(["--test", "1", "--png", png.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .env("KILN_CACHE_DIR", d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("test_images[1]: label 12 (3x5 pixels)\n"), "{stdout}");
    // Image 1 starts at pixel 15 (odd, black): 3 rows of 5 pixels, 2 characters each.
    let art: Vec<&str> = stdout.lines().skip(1).take(3).collect();
    assert_eq!(art, ["  ██  ██  ", "██  ██  ██", "  ██  ██  "], "{stdout}");
    // Enlarged to at least 280 pixels on the longer side, as a 28x28 digit is.
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (5 * 56, 3 * 56), "the image alone, no caption band");
}

/// A `train` killed (SIGKILL) at arbitrary moments, including while it
/// writes its model, metrics and chart, leaves each file either as it was
/// or complete and valid: never truncated.
#[test]
fn a_killed_train_never_leaves_a_truncated_file() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let metrics = d.path().join("m.metrics.jsonl");
    let chart = d.path().join("m.training.png");
    for (p, bytes) in [(&out, &b"previous model"[..]), (&metrics, b"previous metrics"), (&chart, b"previous chart")] {
        std::fs::write(p, bytes).unwrap();
    }
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_train"))
            .args(["--data", d.path().to_str().unwrap(), "--epochs", "2", "--hidden", "16", "--json"])
            .args(["--out", out.to_str().unwrap()])
            .env("KILN_CACHE_DIR", d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole run takes here; the kills are spread over 0 .. 2x that.
    let start = std::time::Instant::now();
    spawn().wait().unwrap();
    let full = start.elapsed();
    std::fs::write(&out, b"previous model").unwrap();
    std::fs::write(&metrics, b"previous metrics").unwrap();
    std::fs::write(&chart, b"previous chart").unwrap();
    let (mut finished, mut killed) = (0, 0);
    let kills = 30u32;
    for i in 0..kills {
        let mut child = spawn();
        std::thread::sleep(full * 2 * i / kills);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
        } else {
            killed += 1;
        }
        let model = std::fs::read(&out).unwrap();
        assert!(model == b"previous model" || kiln::checkpoint::load(&out).is_ok(), "kill {i}: model truncated");
        let m = std::fs::read(&metrics).unwrap();
        assert!(
            m == b"previous metrics"
                || String::from_utf8(m).unwrap().lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "kill {i}: metrics truncated"
        );
        let c = std::fs::read(&chart).unwrap();
        assert!(c == b"previous chart" || image::load_from_memory(&c).is_ok(), "kill {i}: chart truncated");
    }
    // The sweep spans runs killed early and runs that finished (and so
    // passed through their saves).
    assert!(finished > 0 && killed > 0, "sweep did not span the run: {finished} finished, {killed} killed");
}

/// The replay: `train --init G --no-shuffle --steps-per-epoch 3
/// --epochs 1` from Keras's step-0 weights (converted to `dense_K.*` names,
/// no metadata, as a Keras export gives them) on the golden file's 384
/// images writes Keras's step-3 weights.
#[test]
fn init_no_shuffle_and_steps_per_epoch_replay_keras() {
    let d = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-seq3-rmsprop.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (img, lab) = (st.tensor("images").unwrap(), st.tensor("labels").unwrap());
    // 384 training images in Keras's order; the test split is the same.
    for (prefix, n) in [("train", 384u32), ("t10k", 384)] {
        write_idx(d.path(), &format!("{prefix}-images-idx3-ubyte"), &[n, 28, 28], img.data());
        write_idx(d.path(), &format!("{prefix}-labels-idx1-ubyte"), &[n], lab.data());
    }
    let tensor = |name: &str| st.tensor(name).unwrap();
    let mut views = Vec::new();
    for k in 1..=3 {
        for what in ["kernel", "bias"] {
            let t = tensor(&format!("dense_{k}.{what}.step0"));
            views.push((
                format!("dense_{k}.{what}"),
                safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap(),
            ));
        }
    }
    let init = d.path().join("keras-step0.safetensors");
    std::fs::write(&init, safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None).unwrap()).unwrap();
    let out = d.path().join("m.safetensors");
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--no-shuffle",
            "--steps-per-epoch",
            "3",
            "--epochs",
            "1",
            "--layers",
            "64:relu,32:relu,10:softmax",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (params, meta) = kiln::checkpoint::load(&out).unwrap();
    assert_eq!(meta["steps_per_epoch"], "3");
    for l in 0..3 {
        for (what, got) in [("kernel", params.kernel(l)), ("bias", params.bias(l))] {
            let t = tensor(&format!("dense_{}.{what}.step3", l + 1));
            let want: Vec<f32> =
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let scale = want.iter().fold(0f64, |m, &w| m.max(f64::from(w).abs()));
            let diff = got.iter().zip(&want).fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - f64::from(w)).abs()));
            assert!(diff / scale <= 5e-6, "dense_{}.{what}: relative error {:.2e}", l + 1, diff / scale);
        }
    }
    // The same file without --no-shuffle starts from other batches: different weights.
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--steps-per-epoch",
            "3",
            "--epochs",
            "1",
            "--layers",
            "64:relu,32:relu",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(kiln::checkpoint::load(&out).unwrap().0, params, "shuffling changed nothing");
    // An --init file for other layers is a one-line error, and nothing is written.
    let other = d.path().join("other.safetensors");
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--layers",
            "64:relu",
            "--out",
            other.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("keras-step0.safetensors: its kernels are 784x64, 64x32, 32x10"), "{}", stderr(&o));
    assert!(!other.exists());
}

/// A dataset that is not MNIST's shape: 14x14 images (MNIST digits
/// subsampled) with 26 classes trains a three-layer model, and `predict`
/// answers with 26 probabilities.
#[test]
fn a_14x14_dataset_with_26_classes_trains_and_predicts() {
    let d = tempfile::tempdir().unwrap();
    let g =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-rmsprop-h64.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&g).unwrap();
    let (img, lab) = (st.tensor("images").unwrap().data().to_vec(), st.tensor("labels").unwrap().data().to_vec());
    let small: Vec<u8> = (0..384)
        .flat_map(|i| {
            let img = &img;
            (0..14).flat_map(move |r| (0..14).map(move |c| img[i * 784 + 2 * r * 28 + 2 * c]))
        })
        .collect();
    let labels: Vec<u8> = (0..384).map(|i| (lab[i] + 10 * (i % 3) as u8) % 26).collect();
    assert_eq!(labels.iter().max(), Some(&25));
    write_idx(d.path(), "train-images-idx3-ubyte", &[300, 14, 14], &small[..300 * 196]);
    write_idx(d.path(), "train-labels-idx1-ubyte", &[300], &labels[..300]);
    write_idx(d.path(), "t10k-images-idx3-ubyte", &[84, 14, 14], &small[300 * 196..]);
    write_idx(d.path(), "t10k-labels-idx1-ubyte", &[84], &labels[300..]);
    let out = d.path().join("m.safetensors");
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--layers",
            "40:relu,dropout:0.25,30:tanh",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (params, meta) = kiln::checkpoint::load(&out).unwrap();
    assert_eq!((params.arch().inputs(), params.arch().classes()), (196, 26));
    assert_eq!(params.arch().spec(), "40:relu,dropout:0.25,30:tanh,26:softmax");
    assert_eq!(meta["layers"], "40:relu,dropout:0.25,30:tanh,26:softmax");
    assert_eq!(meta["image_shape"], "14x14");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines[2]["loss"].as_f64() < lines[0]["loss"].as_f64(), "loss did not fall: {stdout}");
    assert_eq!(lines[3]["confusion"].as_array().unwrap().len(), 26);
    let idx = d.path().join("t10k-images-idx3-ubyte");
    let p = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--model", out.to_str().unwrap(), "--idx", idx.to_str().unwrap(), "--index", "0..3", "--json"])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let answers: Vec<serde_json::Value> =
        String::from_utf8_lossy(&p.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["probabilities"].as_array().unwrap().len(), 26);
    assert_eq!(answers[0]["layers"], "40:relu,dropout:0.25,30:tanh,26:softmax");
    // An output width that is not the data's class count is a one-line error.
    let o = train(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "--layers",
            "40:relu,20:softmax",
            "--epochs",
            "1",
            "--out",
            d.path().join("x.safetensors").to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the output layer has 20 units, but the data has 26 classes"), "{}", stderr(&o));
}

/// Identical runs write identical bytes, whatever the thread count, for a
/// three-layer model with Dropout (the metadata is written in sorted order).
#[test]
fn model_files_are_byte_identical_for_any_thread_count() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let mut files = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = d.path().join(format!("m{threads}.safetensors"));
        let o = train(
            &[
                "--data",
                d.path().to_str().unwrap(),
                "--layers",
                "48:relu,dropout:0.2,32:sigmoid,24:tanh",
                "--epochs",
                "2",
                "--batch-size",
                "50",
                "--threads",
                threads,
                "--backend",
                "auto",
                "--out",
                out.to_str().unwrap(),
                "--json",
            ],
            d.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0] == files[1] && files[0] == files[2], "model files differ between 1, 2 and 3 threads");
}

/// `--validation-split 0.1` on MNIST trains on the first 54,000 images (422
/// steps an epoch) and reports val_loss and val_acc in every JSON line and
/// the metrics file; `--validate-on-test` validates on the 10,000 test images.
#[test]
fn validation_split_holds_out_the_last_tenth_and_reports_val_metrics() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.safetensors");
    for (flags, val_images) in [(&["--validation-split", "0.1"][..], 6000), (&["--validate-on-test"], 10000)] {
        let args =
            [flags, &["--epochs", "2", "--layers", "32:relu", "--json", "--out", out.to_str().unwrap()]].concat();
        let o = train(&args, d.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let banner = stderr(&o);
        let train_images = if val_images == 6000 { 54000 } else { 60000 };
        assert!(banner.contains(&format!("{train_images} training images")), "{banner}");
        assert!(banner.contains(&format!("{val_images}")), "{banner}");
        let stdout = String::from_utf8(o.stdout).unwrap();
        let epochs: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["epoch"].is_u64())
            .collect();
        assert_eq!(epochs.len(), 2, "{stdout}");
        let steps = if val_images == 6000 { 422 } else { 469 };
        for e in &epochs {
            assert_eq!(e["steps"], steps, "{e}");
            let (l, a) = (e["val_loss"].as_f64().unwrap(), e["val_acc"].as_f64().unwrap());
            assert!(l.is_finite() && l > 0.0 && a > 0.8 && a <= 1.0, "{e}");
        }
        let metrics = std::fs::read_to_string(d.path().join("m.metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().filter(|l| l.contains("\"val_loss\"")).count(), 2, "{metrics}");
    }
}

/// The cache-derived blocking never changes a bit: a run that pretends to
/// have Sapphire Rapids' caches (`KILN_CACHES=48K,2M`: other GEMM k- and
/// row blocks, sparse forward blocks and dW1 groups) or a small core's
/// writes the same model file as one with this machine's, on both input
/// paths; the banner names the parameters and where they came from.
#[test]
fn blocking_from_other_caches_gives_identical_model_bytes() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    for layer1 in ["dense", "sparse"] {
        let mut files = Vec::new();
        for caches in [None, Some("48K,2M"), Some("16K,256K")] {
            let out = d.path().join(format!("m-{layer1}-{}.safetensors", files.len()));
            let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
            c.args(["--data", d.path().to_str().unwrap(), "--epochs", "2", "--layers", "40:relu,24:tanh"])
                .args(["--batch-size", "300", "--layer1", layer1, "--out", out.to_str().unwrap()])
                .env("KILN_CACHE_DIR", d.path())
                .env_remove("KILN_BACKEND")
                .env_remove("KILN_CACHES");
            if let Some(spec) = caches {
                c.env("KILN_CACHES", spec);
            }
            let o = c.output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            let banner = String::from_utf8_lossy(&o.stdout).into_owned();
            let simd = !banner.contains("backend scalar");
            if let (Some(spec), true) = (caches, simd) {
                let l1 = spec.split(',').next().unwrap().trim_end_matches('K');
                assert!(banner.contains(&format!("L1d {l1} KiB")) && banner.contains("(KILN_CACHES)"), "{banner}");
            }
            files.push(std::fs::read(&out).unwrap());
        }
        assert!(files.iter().all(|f| *f == files[0]), "{layer1}: the blocking changed the model bytes");
    }
}

#[test]
fn a_closed_standard_output_does_not_stop_the_run() {
    // `train --json | head -1`: the reader goes away; train must not panic
    // on the next line, and must still write its model.
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--data", d.path().to_str().unwrap(), "--epochs", "20", "--hidden", "16", "--json"])
        .args(["--out", out.to_str().unwrap()])
        .env("KILN_CACHE_DIR", d.path())
        .env_remove("KILN_BACKEND")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run train");
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("standard output is closed"), "{}", stderr(&o));
    assert!(out.exists(), "no model written");
}

/// A run that would overwrite one of its inputs or outputs with another, or
/// write to a device, a directory or a place it cannot write, is refused
/// before any work with one line naming both paths, and nothing is written.
#[test]
fn outputs_never_destroy_inputs_or_each_other() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    small_dataset(&data);
    let snapshot = |dir: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let bytes = if e.path().is_file() { std::fs::read(e.path()).unwrap() } else { Vec::new() };
                (e.file_name().into_string().unwrap(), bytes)
            })
            .collect();
        v.sort();
        v
    };
    let before = (snapshot(d.path()), snapshot(&data));
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["--data", data.to_str().unwrap(), "--epochs", "1", "--hidden", "8"];
        args.extend_from_slice(extra);
        train(&args, &d.path().join("cache"))
    };
    let images = data.join("train-images-idx3-ubyte");
    let spelled_otherwise = data.join(".").join("train-labels-idx1-ubyte");
    let (m, metrics_too) = (p("m.safetensors"), p("./m.safetensors"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--out", images.to_str().unwrap()], "is the same file as the input --data"),
        (vec!["--out", &m, "--metrics", spelled_otherwise.to_str().unwrap()], "--metrics"),
        (vec!["--out", &m, "--metrics", &metrics_too], "are the same file"),
        (vec!["--out", &m, "--chart", &m], "are the same file"),
        (vec!["--out", &m, "--checkpoint", &m], "are the same file"),
        (vec!["--out", &m, "--errors", &m], "are the same file"),
        (vec!["--out", "/dev/null"], "is a character device"),
        (vec!["--out", d.path().to_str().unwrap()], "is a directory"),
    ];
    for (extra, want) in cases {
        let o = run(&extra);
        let err = stderr(&o);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().filter(|l| l.starts_with("error")).count(), 1, "{extra:?}: {err}");
        assert_eq!((snapshot(d.path()), snapshot(&data)), before, "{extra:?} wrote something");
    }
    // --init and --resume are inputs too (a --resume that is the checkpoint
    // being continued is fine; see tests/resume.rs).
    let init = d.path().join("init.safetensors");
    std::fs::write(&init, b"not read before the check").unwrap();
    let o = run(&["--out", init.to_str().unwrap(), "--init", init.to_str().unwrap()]);
    assert!(stderr(&o).contains("is the same file as the input --init"), "{}", stderr(&o));
    let o = run(&["--out", init.to_str().unwrap(), "--resume", init.to_str().unwrap(), "--checkpoint", &m]);
    assert!(stderr(&o).contains("is the same file as the input --resume"), "{}", stderr(&o));
    std::fs::remove_file(&init).unwrap();
    assert_eq!((snapshot(d.path()), snapshot(&data)), before);
    #[cfg(unix)]
    {
        // A symlink to an input is that input; a symlink elsewhere is
        // followed: the target is replaced and the link stays.
        let link = d.path().join("link.safetensors");
        std::os::unix::fs::symlink(&images, &link).unwrap();
        let o = run(&["--out", link.to_str().unwrap()]);
        assert!(stderr(&o).contains("is the same file as the input --data"), "{}", stderr(&o));
        std::fs::remove_file(&link).unwrap();
        let target = d.path().join("real.safetensors");
        std::os::unix::fs::symlink("real.safetensors", &link).unwrap();
        let o = run(&["--out", link.to_str().unwrap(), "--batch-size", "100"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read(&target).unwrap().len() > 1000, "the model went to the link's target");
    }
}

/// An output directory that cannot be written is found before training,
/// not after it.
#[cfg(unix)]
#[test]
fn an_unwritable_output_directory_stops_the_run_before_training() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let mut ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes in a 0555 directory; not in /proc, which no one can.
    if tempfile::tempfile_in(&ro).is_ok() {
        ro = std::path::PathBuf::from("/proc");
        assert!(tempfile::tempfile_in(&ro).is_err(), "/proc is not writable");
    }
    let o = train(
        &["--data", d.path().to_str().unwrap(), "--epochs", "50", "--hidden", "8", "--json"]
            .into_iter()
            .chain(["--out", ro.join("m.safetensors").to_str().unwrap()])
            .collect::<Vec<_>>(),
        d.path(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot write in the directory"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "no epoch ran: {}", String::from_utf8_lossy(&o.stdout));
}

/// Output directories that do not exist are created, and said so.
#[test]
fn missing_output_directories_are_created_and_said() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("new").join("dir").join("m.safetensors");
    let o = train(
        &["--data", d.path().to_str().unwrap(), "--epochs", "1", "--hidden", "8", "--batch-size", "100"]
            .into_iter()
            .chain(["--out", out.to_str().unwrap()])
            .collect::<Vec<_>>(),
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    assert!(stderr(&o).contains("created the output directory"), "{}", stderr(&o));
}

/// A resume with fewer epochs than the checkpoint has done is an error,
/// not a model whose metadata disagrees with its weights.
#[test]
fn resuming_with_fewer_epochs_than_done_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let (ck, out) = (d.path().join("ck.safetensors"), d.path().join("x.safetensors"));
    let run = |epochs: &str, resume: bool| {
        let mut args = vec!["--data", d.path().to_str().unwrap(), "--hidden", "8", "--batch-size", "100"];
        args.extend(["--epochs", epochs, "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        if resume {
            args.extend(["--resume", ck.to_str().unwrap()]);
        }
        train(&args, d.path())
    };
    assert!(run("3", false).status.success());
    let model = std::fs::read(&out).unwrap();
    let o = run("2", true);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the checkpoint has 3 epochs done, more than --epochs 2"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), model, "the model is left as it was");
}

/// A class count taken from the labels must be believable: a stray label
/// is reported with its evidence, and an explicit output layer trains that
/// many classes on purpose.
#[test]
fn a_stray_label_is_reported_not_trained_as_a_class() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let out = d.path().join("m.safetensors");
    let base = |extra: &[&str]| {
        let mut args = vec!["--data", d.path().to_str().unwrap(), "--epochs", "1", "--batch-size", "100"];
        args.extend_from_slice(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        train(&args, d.path())
    };
    let labels = d.path().join("t10k-labels-idx1-ubyte");
    let good = std::fs::read(&labels).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() = 200;
    std::fs::write(&labels, &bad).unwrap();
    let o = base(&["--hidden", "8"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("label 200 occurs once in") && err.contains("and never in"), "{err}");
    assert!(err.contains("201:softmax"), "names the way to mean it: {err}");
    // On purpose: the output layer says so.
    let o = base(&["--layers", "8:relu,201:softmax"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The training labels' last label 10 among 0-9.
    std::fs::write(&labels, &good).unwrap();
    let train_labels = d.path().join("train-labels-idx1-ubyte");
    let mut bad = std::fs::read(&train_labels).unwrap();
    *bad.last_mut().unwrap() = 10;
    std::fs::write(&train_labels, &bad).unwrap();
    let o = base(&["--hidden", "8"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("label 10 occurs once in") && err.contains("t10k-labels-idx1-ubyte"), "{err}");
    // A class that never occurs in training.
    let mut gap = std::fs::read(&train_labels).unwrap();
    let header = 8;
    let n = gap.len() - header;
    for (i, l) in gap[header..].iter_mut().enumerate() {
        *l = if *l == 3 || i + 1 == n { 9 } else { *l };
    }
    std::fs::write(&train_labels, &gap).unwrap();
    let o = base(&["--hidden", "8"]);
    assert!(stderr(&o).contains("label 3 never occurs in"), "{}", stderr(&o));
}

/// Thread counts far above the machine's CPUs are refused; a few more than
/// the CPUs run, with a warning.
#[test]
fn thread_counts_far_above_the_cpus_are_refused() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |threads: usize| {
        let t = threads.to_string();
        let args = ["--data", d.path().to_str().unwrap(), "--epochs", "1", "--hidden", "8", "--threads", &t];
        train(
            &args.into_iter().chain(["--out", d.path().join("m.safetensors").to_str().unwrap()]).collect::<Vec<_>>(),
            d.path(),
        )
    };
    let o = run(1000 * cpus);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("use at most {}", 4 * cpus)), "{}", stderr(&o));
    let o = run(cpus + 1);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: --threads"), "{}", stderr(&o));
}

/// Layers too large for the memory the process may use stop the run with
/// one line naming them, before anything large is allocated (not an abort
/// with "memory allocation failed" and a backtrace).
#[cfg(target_os = "linux")]
#[test]
fn layers_too_large_for_memory_are_a_one_line_error() {
    use std::os::unix::process::CommandExt;
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(["--data", d.path().to_str().unwrap(), "--layers", "2000000:relu", "--epochs", "1"])
        .args(["--out", d.path().join("m.safetensors").to_str().unwrap()])
        .env("KILN_CACHE_DIR", d.path());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let o = cmd.output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--layers: the layers 2000000:relu,10:softmax (1590000010 parameters) need at least"),
        "{err}"
    );
    assert!(err.contains("but only") && err.contains("is available"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, no backtrace: {err}");
    assert!(!d.path().join("m.safetensors").exists());
}

/// The small things a user notices: negative values rejected in kiln's own
/// words, each tool's --help about itself, "1 step", the banner without
/// Rust's debug names, an empty --index range called so.
#[test]
fn messages_read_as_written_for_people() {
    let d = tempfile::tempdir().unwrap();
    small_dataset(d.path());
    let data = d.path().to_str().unwrap();
    let out = d.path().join("m.safetensors");
    let o = train(&["--data", data, "--seed", "-1"], d.path());
    assert!(stderr(&o).contains("invalid value '-1' for '--seed <SEED>'"), "{}", stderr(&o));
    let o = train(&["--data", data, "--validation-split", "-0.5", "--out", out.to_str().unwrap()], d.path());
    assert!(stderr(&o).contains("--validation-split: the validation split must be a fraction in (0, 1) (got -0.5)"));
    for (bin, purpose) in [
        (env!("CARGO_BIN_EXE_train"), "Train a Sequential stack"),
        (env!("CARGO_BIN_EXE_predict"), "Predict the digit"),
        (env!("CARGO_BIN_EXE_digit"), "Show image INDEX"),
        (env!("CARGO_BIN_EXE_serve"), "Serve a page"),
    ] {
        let help = Command::new(bin).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.starts_with(purpose), "{bin}: {text}");
    }
    // `--layers`' help names every activation (a new one is added to it).
    let help = Command::new(env!("CARGO_BIN_EXE_train")).arg("--help").output().unwrap();
    let layers = String::from_utf8_lossy(&help.stdout).split("--layers").nth(1).unwrap_or_default().to_string();
    let layers = layers.split("\n      --").next().unwrap_or_default().to_string();
    for a in kiln::model::Activation::ALL {
        assert!(layers.contains(a.name()), "train --help: --layers does not name {a}: {layers}");
    }
    // `--optimizer`'s help names every optimizer, and each optimizer
    // flag's help begins with exactly the optimizers that take it.
    let text = String::from_utf8_lossy(&help.stdout).to_string();
    let line = |flag: &str| {
        let at = text.find(&format!("      {flag} ")).unwrap_or_else(|| panic!("train --help lacks {flag}"));
        text[at..].lines().next().unwrap_or_default().to_string()
    };
    let backend = line("--backend");
    for name in kiln_kernels::BACKEND_NAMES {
        assert!(backend.contains(name), "train --help: --backend does not name {name}: {backend}");
    }
    let optimizer = line("--optimizer");
    for name in Optimizer::NAMES {
        assert!(optimizer.contains(name), "train --help: --optimizer does not name {name}: {optimizer}");
    }
    for (arg, _) in kiln_kernels::KerasArgs::default().given() {
        if arg == "learning_rate" {
            continue; // --lr: every optimizer's
        }
        let flag = if arg == "epsilon" { "--eps".to_string() } else { format!("--{}", arg.replace('_', "-")) };
        let l = line(&flag);
        // "  --eps <EPS>   rmsprop, adam, adamw: epsilon ...": the names before the colon.
        let text: Vec<&str> = l.split_whitespace().skip(1).skip_while(|w| w.starts_with('<')).collect();
        let text = text.join(" ");
        let mut named: Vec<&str> = text.split(':').next().unwrap_or_default().split(", ").collect();
        let mut takers = Optimizer::takers(arg);
        takers.sort_unstable();
        named.sort_unstable();
        assert_eq!(named, takers, "train --help: {flag} should begin with the optimizers that take it: {l}");
    }
    let args = ["--data", data, "--hidden", "8", "--epochs", "1", "--batch-size", "300", "--out"];
    let o = train(&args.into_iter().chain([out.to_str().unwrap()]).collect::<Vec<_>>(), d.path());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("1 step - "), "{stdout}");
    assert!(stdout.contains("--layer1 auto") && !stdout.contains("Auto"), "{stdout}");
    let idx = d.path().join("t10k-images-idx3-ubyte");
    let o = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--model", out.to_str().unwrap(), "--idx", idx.to_str().unwrap(), "--index", "5..2"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("--index 5..2: an empty range"), "{}", stderr(&o));
}
