//! `train --checkpoint` / `--resume`: a run killed at any moment and
//! resumed from its last checkpoint ends with the same model file, byte for
//! byte, and the same metrics as the run left alone; checkpoints that do
//! not fit the run are one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The run every test here makes: the vendored MNIST, a small network with
/// Dropout (whose masks a resumed run must draw as the first run would), an
/// optimizer with two state slots, validation and early stopping with
/// restore-best (all of which a checkpoint must carry), on one thread so
/// that an epoch lasts long enough to be killed inside.
fn base_args(dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    [
        "--layers",
        "64:relu,dropout:0.3",
        "--optimizer",
        "adam",
        "--epochs",
        "3",
        "--validation-split",
        "0.1",
        "--early-stopping",
        "5",
        "--restore-best",
        "--threads",
        "1",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--out".into(), p("m.safetensors"), "--checkpoint".into(), p("ckpt.safetensors")])
    .collect()
}

fn command(dir: &Path, cache: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.args(args).env("KILN_CACHE_DIR", cache).env_remove("KILN_BACKEND");
    c.current_dir(dir);
    c
}

fn run(dir: &Path, cache: &Path, args: &[String]) -> Output {
    command(dir, cache, args).output().expect("run train")
}

/// The metrics file without its wall-clock fields (which no two runs share).
fn metrics_sans_time(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
                o.remove("images_per_sec");
            }
            v
        })
        .collect()
}

/// Epochs recorded in the checkpoint at `path` (0 when there is none yet).
fn epochs_in_checkpoint(path: &Path) -> usize {
    let Ok(bytes) = std::fs::read(path) else { return 0 };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("a whole checkpoint");
    let progress = header.metadata().as_ref().unwrap()["progress"].clone();
    let v: serde_json::Value = serde_json::from_str(&progress).unwrap();
    v["reports"].as_array().unwrap().len()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error lines of a failed run's stderr (with `--json` the banner goes
/// to stderr too); there must be exactly one.
fn error_line(o: &Output) -> String {
    let e = stderr(o);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(!o.status.success() && errors.len() == 1, "expected one error line: {e}");
    errors[0].to_string()
}

struct Reference {
    model: Vec<u8>,
    metrics: Vec<serde_json::Value>,
    epoch: Duration,
}

fn reference(cache: &Path) -> (tempfile::TempDir, Reference) {
    let d = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let o = run(d.path(), cache, &base_args(d.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let r = Reference {
        model: std::fs::read(d.path().join("m.safetensors")).unwrap(),
        metrics: metrics_sans_time(&d.path().join("m.metrics.jsonl")),
        epoch: start.elapsed() / 3,
    };
    (d, r)
}

#[test]
fn a_run_killed_anywhere_and_resumed_ends_byte_identical() {
    let cache = tempfile::tempdir().unwrap();
    let (_keep, want) = reference(cache.path());
    // Kill points: right after the first checkpoint appears, inside epoch 2
    // and inside epoch 3 (after the second), and right after the second.
    let points: [(usize, f64); 4] = [(1, 0.0), (1, 0.4), (2, 0.0), (2, 0.6)];
    let mut resumed_from = Vec::new();
    for (after, fraction) in points {
        let d = tempfile::tempdir().unwrap();
        let args = base_args(d.path());
        let ckpt = d.path().join("ckpt.safetensors");
        let mut child =
            command(d.path(), cache.path(), &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while epochs_in_checkpoint(&ckpt) < after && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(want.epoch.mul_f64(fraction));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        let done = epochs_in_checkpoint(&ckpt);
        assert!(done >= 1, "the kill came before any checkpoint");
        resumed_from.push(done);
        let mut resume = args.clone();
        resume.extend(["--resume".to_string(), ckpt.to_str().unwrap().to_string()]);
        let o = run(d.path(), cache.path(), &resume);
        assert!(o.status.success(), "resume after {done} epochs: {}", stderr(&o));
        let model = std::fs::read(d.path().join("m.safetensors")).unwrap();
        assert!(
            model == want.model,
            "resumed after {done} epochs: the model file differs from the uninterrupted run's"
        );
        let metrics = metrics_sans_time(&d.path().join("m.metrics.jsonl"));
        assert_eq!(metrics, want.metrics, "resumed after {done} epochs: metrics differ");
    }
    assert!(resumed_from.contains(&1) && resumed_from.contains(&2), "kills resumed from {resumed_from:?}");
}

#[test]
fn a_checkpoint_of_another_run_is_a_one_line_error_and_nothing_is_overwritten() {
    let cache = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut args = base_args(d.path());
    let epochs = args.iter().position(|a| a == "--epochs").unwrap();
    args[epochs + 1] = "1".into();
    let o = run(d.path(), cache.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt: PathBuf = d.path().join("ckpt.safetensors");
    let saved = std::fs::read(&ckpt).unwrap();
    let model = std::fs::read(d.path().join("m.safetensors")).unwrap();
    let with = |change: &[(&str, &str)]| {
        let mut a = args.clone();
        for (flag, value) in change {
            match a.iter().position(|x| x == flag) {
                Some(i) => a[i + 1] = value.to_string(),
                None => a.extend([flag.to_string(), value.to_string()]),
            }
        }
        a.extend(["--resume".to_string(), ckpt.to_str().unwrap().to_string()]);
        a
    };
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("--layers", "32:relu")], "the checkpoint is of the layers 64:relu,dropout:0.3,10:softmax"),
        (&[("--optimizer", "rmsprop")], "the checkpoint was made with --optimizer Adam("),
        (&[("--validation-split", "0.2")], "made with --validation-split 0.1, but this run has --validation-split 0.2"),
        (&[("--batch-size", "64")], "the checkpoint was made with --batch-size 128, but this run has --batch-size 64"),
        (&[("--seed", "2")], "the checkpoint was made with --seed 1, but this run has --seed 2"),
    ];
    for (change, want) in cases {
        let e = error_line(&run(d.path(), cache.path(), &with(change)));
        assert!(e.contains(want), "{change:?}: {e}");
        assert!(e.contains(ckpt.to_str().unwrap()), "{change:?}: the error does not name the file: {e}");
    }
    // A truncated or corrupt checkpoint.
    for (what, bytes) in [("truncated", &saved[..saved.len() / 2]), ("empty", &saved[..0])] {
        std::fs::write(&ckpt, bytes).unwrap();
        let e = error_line(&run(d.path(), cache.path(), &with(&[])));
        assert!(e.contains(ckpt.to_str().unwrap()), "{what}: {e}");
        // The failed resume overwrote nothing.
        assert_eq!(std::fs::read(&ckpt).unwrap(), bytes, "{what}: the checkpoint was overwritten");
        assert!(std::fs::read(d.path().join("m.safetensors")).unwrap() == model, "{what}: the model was overwritten");
    }
    // A model file is not a checkpoint (a copy: the run's own --out is
    // refused as an input it would overwrite, see tests/cli.rs).
    let other = d.path().join("other.safetensors");
    std::fs::copy(d.path().join("m.safetensors"), &other).unwrap();
    let o = run(d.path(), cache.path(), &{
        let mut a = args.clone();
        a.extend(["--resume".into(), other.to_str().unwrap().into()]);
        a
    });
    assert!(error_line(&o).contains("expected \"kiln-checkpoint-v1\""), "{}", stderr(&o));
}
