//! The properties the fuzz targets (`fuzz/fuzz_targets/`) check on arbitrary
//! bytes, shared with `tests/fuzz_seeds.rs`, which replays every seed and
//! every saved crash (`fuzz/seeds/`, `fuzz/regressions/`) on stable Rust.
//! Each function panics when its property fails, as a fuzz target must;
//! otherwise it returns whether the input was accepted.

use crate::idx::{parse, Kind};
use crate::preprocess::{decode_gray, to_mnist, Invert};
use std::path::Path;

/// The cap on decompressed bytes while fuzzing: lower than the real 8 GiB
/// so a decompression bomb is refused quickly; the same code path.
pub const GZIP_LIMIT: u64 = 16 << 20;

/// The cap on decoded image pixels while fuzzing (the real one is 50 M).
pub const IMAGE_PIXELS: u64 = 1_000_000;

/// The IDX parser: sizes that account for the input exactly, or an error.
pub fn idx_raw(data: &[u8]) -> bool {
    let mut accepted = false;
    for kind in [Kind::Images, Kind::Labels] {
        if let Ok(h) = parse(data, kind) {
            assert_eq!(h.offset + h.bytes, data.len(), "parsed sizes must account for the whole file");
            let per_item = h.rows * h.cols;
            assert_eq!(h.count * per_item, h.bytes);
            accepted = true;
        }
    }
    accepted
}

/// A `.gz` data file: capped decompression, then [`idx_raw`] on the output.
pub fn idx_gzip(data: &[u8]) -> bool {
    let mut out = Vec::new();
    let produced = crate::data::gunzip(data, GZIP_LIMIT, |chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    });
    match produced {
        Ok(n) => {
            assert_eq!(n, out.len() as u64);
            assert!(n <= GZIP_LIMIT, "the cap must hold");
            idx_raw(&out)
        }
        Err(_) => false,
    }
}

/// The model loader: every tensor of its shape with finite values, or an
/// error naming the file.
pub fn model(data: &[u8]) -> bool {
    match crate::checkpoint::from_bytes(data, Path::new("fuzz.safetensors")) {
        Ok((params, _meta)) => {
            assert_eq!(params.values().len(), params.arch().parameters());
            assert!(params.values().iter().all(|v| v.is_finite()));
            true
        }
        Err(e) => {
            assert!(format!("{e:#}").starts_with("fuzz.safetensors: "), "errors name the file: {e:#}");
            false
        }
    }
}

/// Image decoding and MNIST preprocessing: a 28x28 digit, or an error
/// naming the file.
pub fn image(data: &[u8]) -> bool {
    match decode_gray(data, Path::new("fuzz.png"), IMAGE_PIXELS) {
        Ok((gray, h, w)) => {
            assert_eq!(gray.len(), h * w);
            assert!(gray.iter().all(|v| (0.0..=1.0).contains(v)), "gray values in [0, 1]");
            for invert in [Invert::Guess, Invert::Yes, Invert::No] {
                match to_mnist(&gray, h, w, invert) {
                    Ok(digit) => assert_eq!(digit.len(), 784),
                    Err(e) => assert!(format!("{e:#}").contains("ink"), "only a missing digit fails: {e:#}"),
                }
            }
            true
        }
        Err(e) => {
            assert!(format!("{e:#}").starts_with("fuzz.png: "), "errors name the file: {e:#}");
            false
        }
    }
}

/// The `.npy` and `.npz` readers: an archive (starting `PK`) or a single
/// array; every array accepted holds exactly its shape's bytes, and its
/// conversions cannot panic. Decompression is capped at [`GZIP_LIMIT`].
pub fn npz(data: &[u8]) -> bool {
    let arrays: Vec<crate::npz::Array> = if data.starts_with(b"PK") {
        match crate::npz::read_npz_from(data.to_vec(), "fuzz.npz", GZIP_LIMIT) {
            Ok(a) => a.into_values().collect(),
            Err(_) => return false,
        }
    } else {
        match crate::npz::read_npy_from(data.to_vec(), "fuzz.npy") {
            Ok(a) => vec![a],
            Err(_) => return false,
        }
    };
    for a in &arrays {
        assert_eq!(a.bytes().len(), a.len() * a.dtype().size(), "{a:?}: bytes must match the shape");
        let _ = (a.to_f32(), a.to_i64(), crate::npz::labels_of(a, a.shape().first().copied().unwrap_or(0)));
    }
    true
}
