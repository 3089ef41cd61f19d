//! Reads and decodes a user can steer are bounded in memory, measured as
//! the peak resident memory of the `predict` process (its own test binary,
//! so that no other test's children share the measure). Linux only:
//! `ru_maxrss` is in KiB there (bytes on macOS), and `/dev/zero` is read.
#![cfg(target_os = "linux")]

use kiln::model::{Arch, Params};
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "common/png16.rs"]
mod png16;
use png16::png16;

/// Runs `predict` with `args` and returns its exit status, its standard
/// error and its own peak resident memory in bytes (`wait4`'s rusage).
fn predict(args: &[&Path]) -> (bool, String, u64) {
    let err = tempfile::NamedTempFile::new().unwrap();
    // Waited for below by `wait4`, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .expect("run predict");
    let (mut status, pid) = (0, child.id() as libc::pid_t);
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unwaited child; both pointers are to owned values.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, std::fs::read_to_string(err.path()).unwrap(), usage.ru_maxrss as u64 * 1024)
}

fn model(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("m.safetensors");
    let arch = Arch::parse("16:relu", 784, 10).unwrap();
    kiln::checkpoint::save(&p, &Params::glorot(&arch, 1), &Default::default()).unwrap();
    p
}

#[test]
fn an_endless_file_is_read_only_up_to_its_cap() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let (ok, err, peak) = predict(&[Path::new("--model"), &m, Path::new("/dev/zero")]);
    assert!(!ok);
    let cap = kiln::preprocess::MAX_FILE_BYTES;
    assert!(err.contains(&format!("/dev/zero: holds more; at most {cap} bytes are read for an image file")), "{err}");
    assert!(peak < cap + (64 << 20), "peak {} MB", peak >> 20);
}

/// The largest image accepted, 16-bit RGBA (8 bytes a pixel decoded), stays
/// within `preprocess::BYTES_PER_PIXEL` a pixel (plus the process's own
/// ~30 MB); a larger one is refused from its header, before decoding.
#[test]
fn decoding_the_largest_image_accepted_stays_within_its_bound() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let side = 1u32 << 12; // 4096 x 4096 = MAX_PIXELS
    assert_eq!(u64::from(side) * u64::from(side), kiln::preprocess::MAX_PIXELS);
    let big = d.path().join("big.png");
    // A dark "1" on white.
    std::fs::write(
        &big,
        png16(side, side, |x, y| (side / 4..side * 3 / 4).contains(&y) && x.abs_diff(side / 2) < side / 16),
    )
    .unwrap();
    let (ok, err, peak) = predict(&[Path::new("--model"), &m, &big]);
    assert!(ok, "{err}");
    let bound = kiln::preprocess::MAX_PIXELS * kiln::preprocess::BYTES_PER_PIXEL + (48 << 20);
    assert!(peak <= bound, "peak {} MB over the bound {} MB", peak >> 20, bound >> 20);
    // 7000 x 7000 16-bit RGBA, a few hundred KB on disk: refused unread.
    let huge = d.path().join("huge.png");
    std::fs::write(&huge, png16(7000, 7000, |_, _| false)).unwrap();
    let (ok, err, peak) = predict(&[Path::new("--model"), &m, &huge]);
    assert!(!ok && err.contains("7000x7000 pixels (rows x columns) is more than the 16777216 accepted"), "{err}");
    assert!(peak < 64 << 20, "refused from its header: peak {} MB", peak >> 20);
}
