//! Datasets of u8 images of any size (at least 1x1, the same in both splits)
//! with u8 labels, memory-mapped from IDX files, or read from a Keras-style
//! `.npz` archive (`x_train`, `y_train`, `x_test`, `y_test`: [`Dataset::load_npz`]),
//! whose `x` may also be f32 features. The classes are the labels
//! `0..=max`; whether they fit the model is checked by whoever uses them.
//!
//! A directory holds the four standard names (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`), each raw or with a `.gz` suffix. Raw files are
//! mapped directly. A `.gz` file is decompressed once into a cache directory
//! (to a temporary file that is renamed into place only when complete, so a
//! partial file is never mistaken for a good one), checked against the
//! directory's `SHA256SUMS` when that lists it, and the result is mapped.
//!
//! Nothing is converted to floats here: the pixels stay `u8` in the mapping
//! and the kernels read them through row indices (see `kiln_kernels`).

use crate::idx::{self, Kind};
use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest IDX file kiln reads into memory, and largest it accepts
/// decompressed from a `.gz` (a guard against decompression bombs; 8 GiB
/// is ten million 28x28 images).
pub const MAX_IDX_BYTES: u64 = 8 << 30;

/// The directory of the vendored MNIST files, the default dataset.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))
}

/// Where decompressed `.gz` files are kept: `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`, else a folder in the
/// system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("KILN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kiln")))
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-cache"))
}

/// A validated IDX file, mapped read-only.
#[derive(Debug)]
struct IdxFile {
    /// The file the user named (the `.gz` for compressed files).
    path: PathBuf,
    /// The decompressed copy in the cache that is mapped, for `.gz` files.
    cached: Option<PathBuf>,
    map: Mmap,
    header: idx::Header,
    /// Whether the content matched a SHA-256 listed in `SHA256SUMS`.
    verified: bool,
}

impl IdxFile {
    fn payload(&self) -> &[u8] {
        &self.map[self.header.offset..self.header.offset + self.header.bytes]
    }
}

/// Where a split's images or labels come from.
#[derive(Debug)]
enum Column {
    /// A mapped IDX file.
    Idx(IdxFile),
    /// An array of the `.npz` archive `path`.
    Npz { path: PathBuf, values: Values },
}

/// An `.npz` array's values as kiln keeps them.
#[derive(Debug)]
enum Values {
    /// u8 as stored (mapped when stored uncompressed).
    Array(crate::npz::Array),
    /// u8 made from the array: class ids, or floats that were all `k / 255`.
    Bytes(Vec<u8>),
    /// f32 features.
    Floats(Vec<f32>),
}

impl Column {
    fn bytes(&self) -> &[u8] {
        match self {
            Column::Idx(f) => f.payload(),
            Column::Npz { values: Values::Array(a), .. } => a.bytes(),
            Column::Npz { values: Values::Bytes(b), .. } => b,
            Column::Npz { values: Values::Floats(_), .. } => &[],
        }
    }

    fn path(&self) -> &Path {
        match self {
            Column::Idx(f) => &f.path,
            Column::Npz { path, .. } => path,
        }
    }
}

/// One split of a dataset: images `(n, rows * cols)` u8 (or f32 features
/// `(n, width)`) and labels `(n)`.
#[derive(Debug)]
pub struct Split {
    images: Column,
    labels: Column,
    len: usize,
    /// `(rows, cols)` of an image; `(1, width)` for features.
    shape: (usize, usize),
    /// Max label + 1, found at load time so that callers need not rescan.
    classes: usize,
}

impl Split {
    /// Number of images (and labels).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(rows, cols)` of each image, both at least 1; `(1, width)` for
    /// features, or images that were not 2-D.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }
    /// Pixels per image, `rows * cols` (values per sample).
    pub fn width(&self) -> usize {
        // Cannot overflow: the loaders proved `len * rows * cols` fits and
        // a split holds at least one image.
        self.shape.0 * self.shape.1
    }
    /// Whether the split holds images (u8 pixels), not f32 features.
    pub fn is_images(&self) -> bool {
        !matches!(self.images, Column::Npz { values: Values::Floats(_), .. })
    }
    /// The pixels as the features they stand for (`pixel / 255` in f32,
    /// exactly what floats that were `k / 255` held).
    fn make_features(&mut self) {
        if self.is_images() {
            let lut = kiln_kernels::pixel_table::<f32>();
            let x = self.pixels().iter().map(|&p| lut[usize::from(p)]).collect();
            let path = self.images.path().to_path_buf();
            self.images = Column::Npz { path, values: Values::Floats(x) };
        }
    }

    /// All inputs: the pixels, or the f32 features.
    pub fn inputs(&self) -> crate::model::Inputs<'_> {
        match &self.images {
            Column::Npz { values: Values::Floats(x), .. } => crate::model::Inputs::Features(x),
            other => crate::model::Inputs::Pixels(other.bytes()),
        }
    }
    /// Number of classes: the largest label + 1 (1 to 256).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// All pixels, `(len, width)` row-major, straight from the mapping;
    /// empty for features ([`Split::inputs`] has them).
    pub fn pixels(&self) -> &[u8] {
        self.images.bytes()
    }
    /// All labels, `(len)`, each below [`Split::classes`].
    pub fn labels(&self) -> &[u8] {
        self.labels.bytes()
    }
    /// The [`Split::width`] pixels of image `i`, row-major; panics when `i`
    /// is not below [`Split::len`], like slice indexing, or the split holds
    /// features.
    pub fn image(&self, i: usize) -> &[u8] {
        let w = self.width();
        &self.pixels()[i * w..(i + 1) * w]
    }
    /// The images file as the user named it (the `.gz` when compressed), for
    /// error messages.
    pub fn images_path(&self) -> &Path {
        self.images.path()
    }
    /// The labels file as the user named it, for error messages (e.g. a
    /// label the model has no output for).
    pub fn labels_path(&self) -> &Path {
        self.labels.path()
    }
    fn verified(&self) -> bool {
        [&self.images, &self.labels].iter().all(|c| matches!(c, Column::Idx(f) if f.verified))
    }
    /// Every file this split reads: the images and labels files as named,
    /// and the decompressed copies of `.gz` files in the cache.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.images, &self.labels].into_iter().flat_map(|c| {
            let cached = match c {
                Column::Idx(f) => f.cached.as_deref(),
                Column::Npz { .. } => None,
            };
            std::iter::once(c.path()).chain(cached)
        })
    }
}

/// A training split and a test split, loaded from one directory.
#[derive(Debug)]
pub struct Dataset {
    /// The directory the files came from (the archive, for `.npz`).
    pub dir: PathBuf,
    /// The 60,000 training images for MNIST.
    pub train: Split,
    /// The 10,000 test images for MNIST.
    pub test: Split,
}

impl Dataset {
    /// Loads and validates the four files of `dir`, decompressing `.gz`
    /// files into `cache` on first use.
    pub fn load(dir: &Path, cache: &Path) -> Result<Dataset> {
        if !dir.is_dir() {
            bail!("{}: data directory not found (it should hold the four MNIST IDX files, raw or .gz)", dir.display());
        }
        let sums = read_sums(dir)?;
        let open = |name: &str, kind| open_idx(dir, name, kind, cache, &sums);
        let train =
            split(open("train-images-idx3-ubyte", Kind::Images)?, open("train-labels-idx1-ubyte", Kind::Labels)?)?;
        let test = split(open("t10k-images-idx3-ubyte", Kind::Images)?, open("t10k-labels-idx1-ubyte", Kind::Labels)?)?;
        // One model reads both splits, so their images must be alike.
        if test.shape() != train.shape() {
            let ((tr, tc), (r, c)) = (test.shape(), train.shape());
            bail!("{}: images are {tr}x{tc}, but the training images are {r}x{c}", test.images_path().display());
        }
        Ok(Dataset { dir: dir.to_path_buf(), train, test })
    }

    /// Loads a Keras-style `.npz` archive (as `keras.datasets.mnist` caches
    /// `mnist.npz`): the arrays `x_train`, `y_train`, `x_test`, `y_test` and
    /// no others; `x` uint8, float32 or float64 of shape `(N, ...)`, `y`
    /// integer class ids `(N,)` or one-hot `(N, C)`. Float `x` that is all
    /// exactly `k / 255` (`x.astype("float32") / 255`) is kept as the
    /// pixels `k`, which train to the same bits, faster.
    pub fn load_npz(path: &Path) -> Result<Dataset> {
        let mut arrays = crate::npz::read_npz(path)?;
        let mut take = |name: &str| {
            arrays.remove(name).with_context(|| {
                format!(
                    "{}: no array `{name}`; expected x_train, y_train, x_test and y_test \
                     (the layout of keras.datasets' .npz files)",
                    path.display()
                )
            })
        };
        let (xtr, ytr, xte, yte) = (take("x_train")?, take("y_train")?, take("x_test")?, take("y_test")?);
        if let Some(extra) = arrays.keys().next() {
            bail!("{}: unexpected array `{extra}`; expected only x_train, y_train, x_test and y_test", path.display());
        }
        let (mut train, mut test) = (npz_split(path, xtr, &ytr)?, npz_split(path, xte, &yte)?);
        ensure!(
            train.width() == test.width(),
            "{}: x_test holds {} values per sample, but x_train holds {}; expected the same",
            path.display(),
            test.width(),
            train.width()
        );
        // One model reads both: when one split is features, both are.
        if !train.is_images() || !test.is_images() {
            train.make_features();
            test.make_features();
        }
        Ok(Dataset { dir: path.to_path_buf(), train, test })
    }

    /// Every file the dataset reads (both splits' [`Split::files`]), which a
    /// run's outputs must not overwrite.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.train.files().chain(self.test.files())
    }

    /// Number of classes of the dataset: the largest label of either split
    /// + 1 (a class may be missing from one split).
    pub fn classes(&self) -> usize {
        self.train.classes().max(self.test.classes())
    }

    /// Checks that a class count taken from the labels (one more than the
    /// largest label) is believable: every class below it occurs in the training
    /// labels, and both splits have the same largest label. A class that
    /// never occurs, or a largest label that only one split has, is far
    /// likelier a corrupt labels file than a real class, so it is an error
    /// with the evidence. Models that mean it name their output layer (and
    /// then need not pass this).
    pub fn check_classes_from_labels(&self) -> Result<()> {
        let count = |s: &Split| {
            let mut n = [0usize; 256];
            for &l in s.labels() {
                n[usize::from(l)] += 1;
            }
            n
        };
        let (train, test) = (count(&self.train), count(&self.test));
        let classes = self.classes();
        let top = classes - 1;
        let hint = format!(
            "so the {classes} classes the labels imply look wrong (a corrupt labels file?), though a dataset \
             may mean them (EMNIST Letters numbers its classes from 1)"
        );
        let (tr, te) = (self.train.labels_path().display(), self.test.labels_path().display());
        let times = |n: usize| if n == 1 { "once".to_string() } else { format!("{n} times") };
        if train[top] == 0 {
            bail!("label {top} occurs {} in {te} and never in {tr}, {hint}", times(test[top]));
        }
        if test[top] == 0 {
            bail!("label {top} occurs {} in {tr} and never in {te}, {hint}", times(train[top]));
        }
        let missing: Vec<String> = (0..classes).filter(|&c| train[c] == 0).map(|c| c.to_string()).collect();
        if !missing.is_empty() {
            let (n, list) = (missing.len(), missing.join(", "));
            let which =
                if n == 1 { format!("label {list} never occurs") } else { format!("labels {list} never occur") };
            bail!("{which} in {tr}, whose largest label is {top}, {hint}");
        }
        Ok(())
    }

    /// One line for the train banner: where the data came from, how big,
    /// its image shape and class count.
    pub fn describe(&self) -> String {
        let check = if self.train.verified() && self.test.verified() { ", SHA-256 verified" } else { "" };
        let (rows, cols) = self.train.shape();
        let classes = self.classes();
        let (what, shape) = if self.train.is_images() {
            ("images", format!("{rows}x{cols}"))
        } else {
            ("samples", format!("{} f32 features", self.train.width()))
        };
        format!(
            "{} ({} train / {} test {what}, {shape}, {classes} class{}{check})",
            self.dir.display(),
            self.train.len(),
            self.test.len(),
            if classes == 1 { "" } else { "es" }
        )
    }
}

/// Checks that images and labels agree and finds the class count. Labels
/// may be any byte: only the model knows how many classes it has.
fn split(images: IdxFile, labels: IdxFile) -> Result<Split> {
    let (ni, nl) = (images.header.count, labels.header.count);
    if ni != nl {
        bail!(
            "{}: holds {nl} labels, but {} holds {ni} images; expected one label per image",
            labels.path.display(),
            images.path.display()
        );
    }
    if ni == 0 {
        bail!("{}: holds no images; expected at least one", images.path.display());
    }
    // Not empty (checked above), so there is a max.
    let classes = labels.payload().iter().max().map_or(0, |&m| usize::from(m) + 1);
    let shape = (images.header.rows, images.header.cols);
    Ok(Split { images: Column::Idx(images), labels: Column::Idx(labels), len: ni, shape, classes })
}

/// A split from the arrays `x` and `y` of the `.npz` archive `path`: `x`
/// uint8, float32 or float64 of shape `(N, ...)` (flattened; floats that
/// are all exactly `k / 255` become the pixels `k`), `y` class ids `(N,)`
/// or one-hot `(N, C)`.
fn npz_split(path: &Path, x: crate::npz::Array, y: &crate::npz::Array) -> Result<Split> {
    use crate::npz::Dtype;
    let o = x.origin().to_string();
    let (n, rest) = match x.shape() {
        [n, rest @ ..] if !rest.is_empty() => (*n, rest.to_vec()),
        s => bail!("{o}: shape {s:?}; expected (samples, ...), e.g. (60000, 28, 28) or (60000, 784)"),
    };
    ensure!(n > 0, "{o}: holds no samples; expected at least one");
    ensure!(n <= u32::MAX as usize, "{o}: {n} samples; at most 2^32 are read");
    let width: usize = rest.iter().product();
    ensure!(width > 0, "{o}: samples of shape {rest:?} hold no values");
    let shape = if let [r, c] = rest[..] { (r, c) } else { (1, width) };
    let values = match x.dtype() {
        Dtype::U8 => Values::Array(x),
        // True is 1.0: the pixel 255.
        Dtype::Bool => Values::Bytes(x.bytes().iter().map(|&b| if b != 0 { 255 } else { 0 }).collect()),
        Dtype::F32 | Dtype::F64 => {
            let f = x.to_f32()?;
            match crate::model::exact_pixels(&f) {
                Some(pixels) => Values::Bytes(pixels),
                None => Values::Floats(f),
            }
        }
        other => bail!("{o}: {} samples; expected uint8 pixels, or float32 or float64 features", other.name()),
    };
    let labels = crate::npz::labels_of(y, n)?;
    let classes = labels.iter().max().map_or(0, |&m| usize::from(m) + 1);
    let column = |values| Column::Npz { path: path.to_path_buf(), values };
    Ok(Split { images: column(values), labels: column(Values::Bytes(labels)), len: n, shape, classes })
}

/// `SHA256SUMS` of `dir`, as (file name, lowercase hex digest) pairs; empty
/// when the directory has none.
fn read_sums(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join("SHA256SUMS");
    if !path.exists() {
        return Ok(Vec::new());
    }
    // A few lines per file: 1 MiB is far more than any list needs.
    let bytes = crate::fsutil::read_regular(&path, 1 << 20, "a list of SHA-256 sums")?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (hash, name) = l.split_once(char::is_whitespace)?;
            Some((name.trim().trim_start_matches('*').to_string(), hash.to_ascii_lowercase()))
        })
        .collect())
}

/// Finds `name` or `name.gz` in `dir`, maps it and validates its header.
fn open_idx(dir: &Path, name: &str, kind: Kind, cache: &Path, sums: &[(String, String)]) -> Result<IdxFile> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let expected = sums.iter().find(|(n, _)| n == name).map(|(_, h)| h.as_str());
    let (path, cached, map, verified) = if raw.is_file() {
        (raw.clone(), None, map_file(&raw)?, false)
    } else if gz.is_file() {
        let cached = decompress_cached(&gz, name, cache, expected)?;
        let map = map_file(&cached)?;
        (gz.clone(), Some(cached), map, expected.is_some())
    } else {
        bail!(
            "{}: not found, nor {}.gz (a data directory holds train-images-idx3-ubyte, \
             train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, raw or .gz)",
            raw.display(),
            name
        );
    };
    let header = idx::parse(&map, kind).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(IdxFile { path, cached, map, header, verified })
}

/// Maps `path` read-only. An empty file cannot be mapped, so it is returned
/// as an empty anonymous map and rejected by the header check.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
    if len == 0 {
        return Ok(memmap2::MmapOptions::new().len(0).map_anon()?.make_read_only()?);
    }
    // SAFETY: the mapping is read-only and private to this process. Files
    // kiln decompressed are never rewritten in place (they are replaced by
    // rename), so they cannot change under the map; a user's raw IDX file
    // could be truncated by another program while mapped, which would fault
    // on access (SIGBUS) rather than read wrong data. That is the accepted
    // cost of zero-copy input and is documented in README.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
    Ok(map)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the path of the decompressed content of `gz` in `cache`,
/// decompressing it first if no complete copy is there. The cache key is the
/// SHA-256 of the compressed bytes, so a changed `.gz` never reuses a stale
/// copy. `expected` is the SHA-256 the content must have, when known.
fn decompress_cached(gz: &Path, name: &str, cache: &Path, expected: Option<&str>) -> Result<PathBuf> {
    // No gzip file of a dataset kiln can train on is larger than its cap
    // decompressed, so that bounds the read too.
    let compressed = crate::fsutil::read_capped(gz, MAX_IDX_BYTES, "a gzip IDX file")?;
    if !compressed.starts_with(&[0x1F, 0x8B]) {
        bail!("{}: is not gzip data although its name ends in .gz (hint: drop the .gz suffix)", gz.display());
    }
    let key = hex(&Sha256::digest(&compressed)[..12]);
    let target = cache.join(format!("{name}.{key}"));
    if target.is_file() {
        return Ok(target);
    }
    fs::create_dir_all(cache).with_context(|| format!("{}: cannot create the cache directory", cache.display()))?;
    // A run killed while decompressing leaves `.<name>.XXXXXX` behind.
    crate::fsutil::remove_stale_temps(cache, &format!(".{name}."), "");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(cache)
        .with_context(|| format!("{}: cannot create a temporary file", cache.display()))?;
    let mut hasher = Sha256::new();
    gunzip(&compressed, MAX_IDX_BYTES, |chunk| {
        hasher.update(chunk);
        tmp.write_all(chunk).with_context(|| format!("{}: cannot write", tmp.path().display()))
    })
    .map_err(|e| anyhow::anyhow!("{}: {e:#}", gz.display()))?;
    if let Some(want) = expected {
        let got = hex(&hasher.finalize());
        if got != want {
            bail!(
                "{}: the decompressed content has SHA-256 {got}, but SHA256SUMS expects {want} \
                 (the file is corrupt or not the one listed)",
                gz.display()
            );
        }
    }
    tmp.as_file().sync_all().with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
    tmp.persist(&target).with_context(|| format!("{}: cannot rename into place", target.display()))?;
    prune_cache(cache, name, &target);
    Ok(target)
}

/// Copies of `name` the cache keeps, newest first (one per version of the
/// `.gz` seen; older ones are removed once a day old, so a cache cannot
/// grow without bound when a dataset keeps changing).
const CACHE_VERSIONS: usize = 4;

/// Removes the copies of `name` in `cache` beyond the [`CACHE_VERSIONS`]
/// most recently written, but never `keep` nor one written in the last day
/// (another run may be about to map it). Best effort.
fn prune_cache(cache: &Path, name: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else { return };
    let prefix = format!("{name}.");
    let mut copies: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    copies.sort_by_key(|c| std::cmp::Reverse(c.0));
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(24 * 3600);
    for (modified, path) in copies.into_iter().skip(CACHE_VERSIONS) {
        if path != keep && modified < day_ago {
            let _ = fs::remove_file(path);
        }
    }
}

/// Decompresses gzip data, handing the output to `sink` in chunks, and
/// refuses more than `limit` bytes of output (a decompression bomb) or
/// corrupt data, with a message that does not name the file (the caller
/// adds it). Returns the number of bytes produced. Any byte string gives
/// output or an error, never a panic (fuzzed: `fuzz/fuzz_targets/idx_gzip.rs`).
pub fn gunzip(compressed: &[u8], limit: u64, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let mut decoder = GzDecoder::new(compressed).take(limit.saturating_add(1));
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) => bail!("corrupt gzip data ({e})"),
        };
        total += n as u64;
        if total > limit {
            if limit >= 1 << 30 {
                bail!("decompresses to more than {} GiB; refusing it", limit >> 30);
            }
            bail!("decompresses to more than {limit} bytes; refusing it");
        }
        sink(&buf[..n])?;
    }
}
