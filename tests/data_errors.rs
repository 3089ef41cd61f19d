//! Every malformed input the loader must reject, each with a one-line error
//! naming the file and what is wrong; and the valid cases (small datasets,
//! images of other sizes, more than ten classes, gzip with a cache, SHA-256
//! verification).

use flate2::{write::GzEncoder, Compression};
use kiln::data::Dataset;
use std::io::Write;
use std::path::Path;
use tempfile::TempDir;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

fn idx(ty: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn images(n: usize) -> Vec<u8> {
    images_of(n, 28, 28)
}

/// `n` images of `rows x cols` with a recognisable pattern.
fn images_of(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let px: Vec<u8> = (0..n * rows * cols).map(|i| (i * 37 % 256) as u8).collect();
    idx(8, &[n as u32, rows as u32, cols as u32], &px)
}

fn labels(n: usize) -> Vec<u8> {
    let l: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    idx(8, &[n as u32], &l)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A valid raw dataset of 30 train and 12 test images in a fresh directory.
fn valid_dir() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, bytes) in
        [(TRAIN_IMAGES, images(30)), (TRAIN_LABELS, labels(30)), (TEST_IMAGES, images(12)), (TEST_LABELS, labels(12))]
    {
        std::fs::write(d.path().join(name), bytes).unwrap();
    }
    d
}

fn load(dir: &Path) -> anyhow::Result<Dataset> {
    Dataset::load(dir, &dir.join("cache"))
}

/// Replaces `name` in a valid dataset by `bytes` (under `file_name`) and
/// returns the single-line error, checking that it names the file.
fn error_with(name: &str, file_name: &str, bytes: &[u8]) -> String {
    let d = valid_dir();
    std::fs::remove_file(d.path().join(name)).unwrap();
    std::fs::write(d.path().join(file_name), bytes).unwrap();
    let e = format!("{:#}", load(d.path()).expect_err("must be rejected"));
    assert!(e.contains(file_name), "error does not name {file_name}: {e}");
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

fn assert_contains(e: &str, want: &str) {
    assert!(e.contains(want), "expected {want:?} in: {e}");
}

#[test]
fn a_small_valid_dataset_loads() {
    let d = valid_dir();
    let ds = load(d.path()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (30, 12));
    assert_eq!(ds.train.pixels().len(), 30 * 784);
    assert_eq!(ds.test.labels()[11], 1);
    assert_eq!(ds.train.image(1)[0], (784 * 37 % 256) as u8);
    assert_eq!((ds.train.shape(), ds.train.width(), ds.test.width()), ((28, 28), 784, 784));
    assert_eq!((ds.train.classes(), ds.test.classes(), ds.classes()), (10, 10, 10));
    assert_eq!(ds.train.images_path(), d.path().join(TRAIN_IMAGES));
    assert_eq!(ds.test.labels_path(), d.path().join(TEST_LABELS));
    assert!(ds.describe().ends_with("(30 train / 12 test images, 28x28, 10 classes)"), "{}", ds.describe());
}

#[test]
fn empty_file() {
    assert_contains(&error_with(TRAIN_IMAGES, TRAIN_IMAGES, &[]), "the file is empty (0 bytes)");
}

#[test]
fn short_file() {
    assert_contains(&error_with(TRAIN_LABELS, TRAIN_LABELS, &[0, 0, 8]), "too short (3 bytes)");
}

#[test]
fn gzip_bytes_under_a_raw_name() {
    let e = error_with(TRAIN_IMAGES, TRAIN_IMAGES, &gzip(&images(30)));
    assert_contains(&e, "gzip-compressed");
    assert_contains(&e, "hint");
}

#[test]
fn corrupt_gzip() {
    let mut gz = gzip(&images(30));
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 16] {
        *b ^= 0x5A;
    }
    let gz_name = format!("{TRAIN_IMAGES}.gz");
    assert_contains(&error_with(TRAIN_IMAGES, &gz_name, &gz), "corrupt gzip data");
    // A truncated gzip stream is corrupt too.
    let gz = gzip(&images(30));
    assert_contains(&error_with(TRAIN_IMAGES, &gz_name, &gz[..gz.len() / 2]), "corrupt gzip data");
}

#[test]
fn gz_name_without_gzip_content() {
    let e = error_with(TRAIN_IMAGES, &format!("{TRAIN_IMAGES}.gz"), &images(30));
    assert_contains(&e, "is not gzip data");
}

#[test]
fn labels_given_as_images_and_the_reverse() {
    let e = error_with(TRAIN_IMAGES, TRAIN_IMAGES, &labels(30));
    assert_contains(&e, "this is an IDX labels file");
    assert_contains(&e, "swapped");
    let e = error_with(TEST_LABELS, TEST_LABELS, &images(12));
    assert_contains(&e, "this is an IDX images file");
}

#[test]
fn byte_swapped_magic() {
    let mut v = images(30);
    v[..4].copy_from_slice(&[3, 8, 0, 0]);
    assert_contains(&error_with(TRAIN_IMAGES, TRAIN_IMAGES, &v), "byte-swapped");
}

#[test]
fn type_byte_other_than_u8() {
    let mut v = labels(30);
    v[2] = 0x0C;
    assert_contains(&error_with(TRAIN_LABELS, TRAIN_LABELS, &v), "element type 0x0C (i32) is not supported");
}

#[test]
fn wrong_number_of_dimensions() {
    let v = idx(8, &[30, 784], &vec![0; 30 * 784]);
    assert_contains(&error_with(TRAIN_IMAGES, TRAIN_IMAGES, &v), "has 2 dimensions");
}

#[test]
fn overflowing_dimensions() {
    let v = idx(8, &[u32::MAX, u32::MAX, u32::MAX], &[]);
    assert_contains(&error_with(TRAIN_IMAGES, TRAIN_IMAGES, &v), "overflow");
}

#[test]
fn payload_one_byte_short_or_trailing() {
    let v = images(30);
    assert_contains(&error_with(TRAIN_IMAGES, TRAIN_IMAGES, &v[..v.len() - 1]), "1 byte short");
    let mut v = labels(12);
    v.extend_from_slice(&[0, 0]);
    assert_contains(&error_with(TEST_LABELS, TEST_LABELS, &v), "2 trailing bytes");
}

#[test]
fn a_32x32_dataset_loads() {
    let d = valid_dir();
    std::fs::write(d.path().join(TRAIN_IMAGES), images_of(30, 32, 32)).unwrap();
    std::fs::write(d.path().join(TEST_IMAGES), images_of(12, 32, 32)).unwrap();
    let ds = load(d.path()).unwrap();
    assert_eq!((ds.train.shape(), ds.train.width()), ((32, 32), 1024));
    assert_eq!((ds.test.shape(), ds.test.width()), ((32, 32), 1024));
    assert_eq!(ds.train.pixels().len(), 30 * 1024);
    assert_eq!(ds.train.image(1).len(), 1024);
    assert_eq!(ds.train.image(1)[0], (1024 * 37 % 256) as u8);
    assert!(ds.describe().contains("32x32, 10 classes"), "{}", ds.describe());
}

#[test]
fn non_square_images_load() {
    let d = valid_dir();
    std::fs::write(d.path().join(TRAIN_IMAGES), images_of(30, 3, 5)).unwrap();
    std::fs::write(d.path().join(TEST_IMAGES), images_of(12, 3, 5)).unwrap();
    let ds = load(d.path()).unwrap();
    assert_eq!((ds.test.shape(), ds.test.width()), ((3, 5), 15));
    assert_eq!(ds.test.image(11), &ds.test.pixels()[11 * 15..]);
}

#[test]
fn train_and_test_image_shapes_differ() {
    let e = error_with(TEST_IMAGES, TEST_IMAGES, &images_of(12, 14, 14));
    assert_contains(&e, "images are 14x14, but the training images are 28x28");
    // Transposed is a different shape too.
    let d = valid_dir();
    std::fs::write(d.path().join(TRAIN_IMAGES), images_of(30, 4, 7)).unwrap();
    std::fs::write(d.path().join(TEST_IMAGES), images_of(12, 7, 4)).unwrap();
    let e = format!("{:#}", load(d.path()).unwrap_err());
    assert_contains(&e, TEST_IMAGES);
    assert_contains(&e, "images are 7x4, but the training images are 4x7");
}

#[test]
fn images_of_zero_pixels() {
    let e = error_with(TRAIN_IMAGES, TRAIN_IMAGES, &idx(8, &[30, 0, 28], &[]));
    assert_contains(&e, "the images are 0x28; expected at least 1x1 pixels");
    let e = error_with(TEST_IMAGES, TEST_IMAGES, &idx(8, &[12, 28, 0], &[]));
    assert_contains(&e, "the images are 28x0; expected at least 1x1 pixels");
}

#[test]
fn image_and_label_counts_differ() {
    let e = error_with(TRAIN_LABELS, TRAIN_LABELS, &labels(29));
    assert_contains(&e, "holds 29 labels");
    assert_contains(&e, "holds 30 images");
}

#[test]
fn labels_up_to_12_load_as_13_classes() {
    let d = valid_dir();
    let mut v = labels(30);
    v[8 + 17] = 12;
    std::fs::write(d.path().join(TRAIN_LABELS), v).unwrap();
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.train.labels()[17], 12);
    assert_eq!((ds.train.classes(), ds.test.classes(), ds.classes()), (13, 10, 13));
    assert!(ds.describe().contains("28x28, 13 classes"), "{}", ds.describe());
    // The largest label a byte holds, in the test split only; and one class.
    let mut v = labels(12);
    v[8 + 3] = 255;
    std::fs::write(d.path().join(TEST_LABELS), v).unwrap();
    std::fs::write(d.path().join(TRAIN_LABELS), idx(8, &[30], &[0; 30])).unwrap();
    let ds = load(d.path()).unwrap();
    assert_eq!((ds.train.classes(), ds.test.classes(), ds.classes()), (1, 256, 256));
}

#[test]
fn missing_file_and_directory() {
    let d = valid_dir();
    std::fs::remove_file(d.path().join(TEST_LABELS)).unwrap();
    let e = format!("{:#}", load(d.path()).unwrap_err());
    assert_contains(&e, TEST_LABELS);
    assert_contains(&e, "not found");
    let e = format!("{:#}", load(&d.path().join("nope")).unwrap_err());
    assert_contains(&e, "data directory not found");
}

#[test]
fn gzip_is_decompressed_once_into_the_cache_and_verified() {
    let d = valid_dir();
    let raw = std::fs::read(d.path().join(TRAIN_IMAGES)).unwrap();
    std::fs::remove_file(d.path().join(TRAIN_IMAGES)).unwrap();
    std::fs::write(d.path().join(format!("{TRAIN_IMAGES}.gz")), gzip(&raw)).unwrap();
    use sha2::Digest;
    let sum: String = sha2::Sha256::digest(&raw).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(d.path().join("SHA256SUMS"), format!("{sum}  {TRAIN_IMAGES}\n")).unwrap();
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.train.pixels(), &raw[16..]);
    let cached: Vec<_> = std::fs::read_dir(d.path().join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1, "exactly one complete file, no temporaries: {cached:?}");
    let modified = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    drop(ds);
    load(d.path()).unwrap();
    assert_eq!(std::fs::metadata(&cached[0]).unwrap().modified().unwrap(), modified, "decompressed twice");

    // A wrong checksum is an error, and leaves nothing in the cache.
    std::fs::write(d.path().join("SHA256SUMS"), format!("{}  {TRAIN_IMAGES}\n", "0".repeat(64))).unwrap();
    std::fs::remove_dir_all(d.path().join("cache")).unwrap();
    let e = format!("{:#}", load(d.path()).unwrap_err());
    assert_contains(&e, &format!("{TRAIN_IMAGES}.gz"));
    assert_contains(&e, "SHA256SUMS expects");
    let left = std::fs::read_dir(d.path().join("cache")).unwrap().count();
    assert_eq!(left, 0, "a rejected file was left in the cache");
}

/// The cache keeps a few versions of each file: a dataset that keeps
/// changing cannot grow it without bound, and recent copies (another run
/// may be using them) are never removed.
#[test]
fn the_cache_keeps_a_bounded_number_of_versions() {
    let d = valid_dir();
    let raw = std::fs::read(d.path().join(TRAIN_IMAGES)).unwrap();
    std::fs::remove_file(d.path().join(TRAIN_IMAGES)).unwrap();
    std::fs::write(d.path().join(format!("{TRAIN_IMAGES}.gz")), gzip(&raw)).unwrap();
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
    for i in 0..6 {
        let f = std::fs::File::create(cache.join(format!("{TRAIN_IMAGES}.old{i}"))).unwrap();
        f.set_modified(old - std::time::Duration::from_secs(i * 60)).unwrap();
    }
    std::fs::File::create(cache.join(format!("{TRAIN_IMAGES}.fresh"))).unwrap();
    std::fs::File::create(cache.join("other-file.old")).unwrap().set_modified(old).unwrap();
    load(d.path()).unwrap();
    let mut left: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(TRAIN_IMAGES)).collect();
    assert_eq!(ours.len(), 4, "the new copy, the fresh one and the two newest old ones: {left:?}");
    for kept in [".fresh", ".old0", ".old1"] {
        assert!(left.contains(&format!("{TRAIN_IMAGES}{kept}")), "{kept} removed: {left:?}");
    }
    assert!(left.contains(&"other-file.old".to_string()), "another file's copy is not touched");
}

#[test]
fn the_vendored_mnist_is_complete_and_verified() {
    let cache = tempfile::tempdir().unwrap();
    let ds = Dataset::load(&kiln::data::default_data_dir(), cache.path()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
    assert!(ds.describe().contains("28x28, 10 classes, SHA-256 verified"), "{}", ds.describe());
    // The tutorial's train_images[4] is a 9.
    assert_eq!(ds.train.labels()[4], 9);
}
