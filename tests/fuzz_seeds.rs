//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) through the same property checks the fuzz
//! targets run (`kiln::fuzz_checks`), on stable Rust, so that a crash found
//! once by `cargo fuzz` stays fixed. Also checks that the valid seeds are
//! accepted and the malformed ones refused, so the seeds mean what they say.

use std::path::Path;

type Check = fn(&[u8]) -> bool;

const TARGETS: [(&str, Check); 5] = [
    ("idx_raw", kiln::fuzz_checks::idx_raw),
    ("idx_gzip", kiln::fuzz_checks::idx_gzip),
    ("model", kiln::fuzz_checks::model),
    ("image", kiln::fuzz_checks::image),
    ("npz", kiln::fuzz_checks::npz),
];

/// Every file of `fuzz/<dir>/<target>/`, with its name.
fn files(dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&d) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_and_saved_crashes_hold_every_property() {
    for (target, check) in TARGETS {
        let seeds = files("seeds", target);
        assert!(seeds.len() >= 8, "fuzz/seeds/{target} should hold the seed corpus (fuzz/make_seeds.py)");
        for (name, bytes) in seeds.iter().chain(&files("regressions", target)) {
            // A failed property panics inside `check`; name the input first.
            eprintln!("{target}: {name}");
            check(bytes);
        }
    }
}

#[test]
fn valid_seeds_are_accepted_and_malformed_ones_refused() {
    let expect = |target: &str, check: Check, accepted: &[&str]| {
        for (name, bytes) in files("seeds", target) {
            let want = accepted.contains(&name.as_str());
            assert_eq!(check(&bytes), want, "{target}/{name}: accepted should be {want}");
        }
    };
    let [raw, gz, model, image, npz] = TARGETS.map(|(_, c)| c);
    expect("idx_raw", raw, &["images3", "labels3", "labels_as_images", "not_28"]);
    expect("idx_gzip", gz, &["images3.gz", "labels3.gz", "labels_as_images.gz", "not_28.gz"]);
    expect("model", model, &["good_h1", "good_seq3", "good_seq3_state"]);
    expect(
        "image",
        image,
        &["blank.pgm", "digit.bmp", "digit.pgm", "digit_gray16.png", "digit_gray8.png", "digit_rgba.png"],
    );
    expect("npz", npz, &["deflated.npz", "f32.npy", "scalar_i8.npy", "stored.npz", "x_u8.npy"]);
}
