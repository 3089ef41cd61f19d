//! Strict readers of NumPy's `.npy` arrays and `.npz` archives (a zip of
//! `.npy` files, as `np.savez` and `np.savez_compressed` write them, and as
//! Keras caches `mnist.npz`). Every header field, dtype, byte order, shape,
//! size and zip entry is checked; each error names the file and the array.
//! Entries stored uncompressed are read from a memory map; deflated ones
//! are inflated up to the size their entry declares, within a cap.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most bytes one array (or a whole `.npy` file) may hold once
/// decompressed, and most bytes of an `.npz` file: what a user's file can
/// make kiln allocate.
pub const MAX_ARRAY_BYTES: u64 = 8 << 30;

/// Most entries an `.npz` archive may list.
const MAX_ENTRIES: usize = 4096;

/// The element types kiln reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `|u1`
    U8,
    /// `|b1`: 0 or 1 (as pixels: 0 or 255, so that `True` reads as 1.0)
    Bool,
    /// `|i1`
    I8,
    /// `<u2`, `<i2`, `<u4`, `<i4`, `<u8`, `<i8`: integers of `size` bytes, `signed` or not.
    Int {
        /// Bytes per element.
        size: usize,
        /// Whether the values are two's complement.
        signed: bool,
    },
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 | Dtype::Bool => 1,
            Dtype::Int { size, .. } => size,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }

    /// NumPy's name (`uint8`, `float32`, ...).
    pub fn name(self) -> String {
        match self {
            Dtype::U8 => "uint8".into(),
            Dtype::Bool => "bool".into(),
            Dtype::I8 => "int8".into(),
            Dtype::Int { size, signed } => format!("{}int{}", if signed { "" } else { "u" }, size * 8),
            Dtype::F32 => "float32".into(),
            Dtype::F64 => "float64".into(),
        }
    }

    fn parse(descr: &str) -> Option<Dtype> {
        Some(match descr {
            "|u1" | "<u1" => Dtype::U8,
            "|b1" => Dtype::Bool,
            "|i1" | "<i1" => Dtype::I8,
            "<u2" => Dtype::Int { size: 2, signed: false },
            "<i2" => Dtype::Int { size: 2, signed: true },
            "<u4" => Dtype::Int { size: 4, signed: false },
            "<i4" => Dtype::Int { size: 4, signed: true },
            "<u8" => Dtype::Int { size: 8, signed: false },
            "<i8" => Dtype::Int { size: 8, signed: true },
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            _ => return None,
        })
    }
}

/// An array's bytes: a slice of a mapped file, or inflated.
enum Bytes {
    Mapped(std::sync::Arc<memmap2::Mmap>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

/// One array: C order, little-endian.
pub struct Array {
    /// Where it came from, for errors: `file.npz` array `x_train`, or `file.npy`.
    origin: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Bytes,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {:?})", self.origin, self.dtype.name(), self.shape)
    }
}

impl Array {
    /// Where the array came from, as errors name it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements in all.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(map, r) => &map[r.clone()],
            Bytes::Owned(v) => v,
        }
    }

    /// The elements as u8 when the dtype is (borrowed, no copy).
    pub fn as_u8(&self) -> Option<&[u8]> {
        (self.dtype == Dtype::U8).then(|| self.bytes())
    }

    /// The elements as f32: float32 as they are, float64 rounded once (an
    /// error naming the array when a value is out of f32's range or not
    /// finite). Integers are refused: they are pixels or labels.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let b = self.bytes();
        let out: Vec<f32> = match self.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            other => bail!("{}: {} values are not features; expected float32 or float64", self.origin, other.name()),
        };
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            bail!("{}: value {i} is {} in f32; features must be finite", self.origin, out[i]);
        }
        Ok(out)
    }

    /// Element `i` as an integer (any integer or bool dtype; `None` for a
    /// float dtype). Panics when `i` is out of range, like indexing.
    fn int_at(&self, i: usize) -> Option<i64> {
        let b = self.bytes();
        Some(match self.dtype {
            Dtype::U8 | Dtype::Bool => i64::from(b[i]),
            Dtype::I8 => i64::from(b[i] as i8),
            Dtype::Int { size, signed } => {
                let mut w = [0u8; 8];
                w[..size].copy_from_slice(&b[i * size..(i + 1) * size]);
                let u = u64::from_le_bytes(w);
                if signed {
                    // Sign-extend from `size` bytes.
                    let shift = 64 - 8 * size as u32;
                    ((u << shift) as i64) >> shift
                } else {
                    // Above i64::MAX only for u64, and no label is that large.
                    i64::try_from(u).unwrap_or(i64::MAX)
                }
            }
            Dtype::F32 | Dtype::F64 => return None,
        })
    }

    /// Element `i` as f64 (any dtype). Panics when `i` is out of range.
    fn f64_at(&self, i: usize) -> f64 {
        let b = self.bytes();
        match self.dtype {
            Dtype::F32 => f64::from(f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])),
            Dtype::F64 => f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes")),
            _ => self.int_at(i).map_or(f64::NAN, |v| v as f64),
        }
    }

    /// The elements as integers (any integer or bool dtype), or an error
    /// naming the array for a float dtype.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        if matches!(self.dtype, Dtype::F32 | Dtype::F64) {
            bail!("{}: {} values are not class ids; expected integers", self.origin, self.dtype.name());
        }
        Ok((0..self.len()).filter_map(|i| self.int_at(i)).collect())
    }
}

/// Parses one `.npy` file's header at the start of `bytes`: the dtype, the
/// shape and where the data starts, checking that the data is exactly the
/// rest of `bytes`. `origin` names the array in errors.
fn parse_npy(bytes: &[u8], origin: &str) -> Result<(Dtype, Vec<usize>, usize)> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    ensure!(bytes.len() >= 10 && bytes.starts_with(MAGIC), "{origin}: not a .npy array (no \\x93NUMPY magic)");
    let (major, minor) = (bytes[6], bytes[7]);
    let (len, start) = match (major, minor) {
        (1, 0) => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        (2 | 3, 0) => {
            ensure!(bytes.len() >= 12, "{origin}: the .npy header is cut short");
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => bail!("{origin}: .npy format version {major}.{minor}; expected 1.0, 2.0 or 3.0"),
    };
    let end = start.checked_add(len).filter(|&e| e <= bytes.len());
    let end =
        end.with_context(|| format!("{origin}: the .npy header claims {len} bytes, past the end of the array"))?;
    // NumPy writes ASCII; anything else is refused before it is sliced.
    let header = std::str::from_utf8(&bytes[start..end])
        .ok()
        .filter(|h| h.is_ascii())
        .with_context(|| format!("{origin}: the .npy header is not ASCII text"))?;
    let fields = parse_dict(header).with_context(|| format!("{origin}: the .npy header `{}`", header.trim_end()))?;
    let descr = fields.get("descr").context("no 'descr'").with_context(|| format!("{origin}: the .npy header"))?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.strip_suffix('\'')).unwrap_or(descr);
    let dtype = match Dtype::parse(descr) {
        Some(d) => d,
        None if descr.starts_with('>') => {
            bail!("{origin}: dtype {descr} is big-endian; save it little-endian (arr.astype(arr.dtype.newbyteorder('<')))")
        }
        None => bail!(
            "{origin}: dtype {descr} is not read; expected uint8, int8..int64, uint16..uint64, bool, float32 or float64"
        ),
    };
    match fields.get("fortran_order").map(String::as_str) {
        Some("False") => {}
        Some("True") => bail!("{origin}: the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)"),
        other => bail!("{origin}: the .npy header's fortran_order is {other:?}; expected False"),
    }
    let shape = fields.get("shape").with_context(|| format!("{origin}: the .npy header has no 'shape'"))?;
    let shape = parse_shape(shape).with_context(|| format!("{origin}: shape {shape}"))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = count.and_then(|c| c.checked_mul(dtype.size()));
    let data = data.with_context(|| format!("{origin}: shape {shape:?} overflows"))?;
    ensure!(
        bytes.len() - end == data,
        "{origin}: shape {shape:?} of {} needs {data} bytes of data, but the array has {}",
        dtype.name(),
        bytes.len() - end
    );
    Ok((dtype, shape, end))
}

/// The `{'key': value, ...}` of a `.npy` header, with exactly the keys
/// `descr`, `fortran_order` and `shape`; values are kept as written.
fn parse_dict(header: &str) -> Result<BTreeMap<String, String>> {
    let body = header.trim_end_matches([' ', '\n']).trim();
    let body = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')).context("not a {...} dictionary")?;
    let mut fields = BTreeMap::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let key_end = rest[1..].find('\'').map(|i| i + 1).filter(|_| rest.starts_with('\''));
        let key_end = key_end.context("a key is not a 'quoted' name")?;
        let key = &rest[1..key_end];
        rest = rest[key_end + 1..].trim_start().strip_prefix(':').context("a key without ':'")?.trim_start();
        // A value runs to the next top-level comma (a shape's commas are inside parentheses).
        let mut depth = 0i32;
        let mut end = rest.len();
        for (i, ch) in rest.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
            ensure!(depth >= 0, "unbalanced parentheses");
        }
        let value = rest[..end].trim();
        ensure!(!value.is_empty(), "'{key}' has no value");
        ensure!(["descr", "fortran_order", "shape"].contains(&key), "unknown key '{key}'");
        ensure!(fields.insert(key.to_string(), value.to_string()).is_none(), "'{key}' twice");
        rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]).trim_start();
    }
    for key in ["descr", "fortran_order", "shape"] {
        ensure!(fields.contains_key(key), "no '{key}'");
    }
    Ok(fields)
}

/// `(60000, 28, 28)`, `(10,)` or `()`.
fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let inner = s.strip_prefix('(').and_then(|s| s.strip_suffix(')')).context("not a (...) tuple")?;
    let mut dims = Vec::new();
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() && i + 1 == parts.len() && (i > 0 || inner.trim().is_empty()) {
            break; // `(10,)` and `()`
        }
        dims.push(p.parse::<usize>().with_context(|| format!("`{p}` is not a dimension"))?);
    }
    ensure!(dims.len() <= 32, "{} dimensions; NumPy allows 32", dims.len());
    Ok(dims)
}

/// Reads a `.npy` file (memory-mapped).
pub fn read_npy(path: &Path) -> Result<Array> {
    let map = map_file(path, "a .npy array")?;
    let origin = path.display().to_string();
    let (dtype, shape, start) = parse_npy(&map, &origin)?;
    let end = map.len();
    Ok(Array { origin, dtype, shape, bytes: Bytes::Mapped(std::sync::Arc::new(map), start..end) })
}

fn map_file(path: &Path, what: &str) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read {what}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("{}: cannot read {what}", path.display()))?;
    ensure!(meta.is_file(), "{}: is not a regular file; expected {what}", path.display());
    ensure!(
        meta.len() <= MAX_ARRAY_BYTES,
        "{}: is {} bytes; at most {MAX_ARRAY_BYTES} are read for {what}",
        path.display(),
        meta.len()
    );
    // Mapped as the IDX files are (see `data::map_file` for what that accepts).
    crate::data::map_file(path)
}

/// Little-endian integers of a zip structure.
fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// One file of a zip archive, from its central directory.
struct Entry {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local: u64,
}

/// The central directory of the zip archive `z` (the whole file).
fn central_directory(z: &[u8], file: &str) -> Result<Vec<Entry>> {
    let bad = |what: &str| anyhow::anyhow!("{file}: not a valid .npz (zip) archive: {what}");
    // The end record is in the last 22 + 65535 bytes (its comment is at most that long).
    let lo = z.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lo..z.len().saturating_sub(21)).rev().find(|&i| le(z, i, 4) == Some(0x0605_4b50));
    let eocd = eocd.ok_or_else(|| bad("no end-of-central-directory record"))?;
    let field = |at: usize, n: usize| le(z, eocd + at, n).ok_or_else(|| bad("the end record is cut short"));
    ensure!(field(4, 2)? == 0 && field(6, 2)? == 0, bad("a multi-disk archive"));
    let (mut entries, mut size, mut offset) = (field(10, 2)?, field(12, 4)?, field(16, 4)?);
    if entries == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        // Zip64: a locator right before the end record points at the real one.
        let loc = eocd.checked_sub(20).ok_or_else(|| bad("no zip64 locator"))?;
        ensure!(le(z, loc, 4) == Some(0x0706_4b50), bad("no zip64 locator"));
        let at = usize::try_from(le(z, loc + 8, 8).ok_or_else(|| bad("zip64 locator cut short"))?)
            .map_err(|_| bad("zip64 end record out of range"))?;
        ensure!(le(z, at, 4) == Some(0x0606_4b50), bad("no zip64 end record where the locator points"));
        let f = |o: usize| le(z, at.saturating_add(o), 8).ok_or_else(|| bad("zip64 end record cut short"));
        (entries, size, offset) = (f(32)?, f(40)?, f(48)?);
    }
    ensure!(entries as usize <= MAX_ENTRIES, bad(&format!("{entries} entries; at most {MAX_ENTRIES} are read")));
    let end =
        offset.checked_add(size).filter(|&e| e <= eocd as u64).ok_or_else(|| bad("central directory out of range"))?;
    let (mut at, end) = (offset as usize, end as usize);
    let mut out = Vec::new();
    for _ in 0..entries {
        let f = |o: usize, n: usize| {
            le(z, at + o, n).filter(|_| at + o + n <= end).ok_or_else(|| bad("central directory cut short"))
        };
        ensure!(f(0, 4)? == 0x0201_4b50, bad("a central directory entry has the wrong signature"));
        let flags = f(8, 2)?;
        ensure!(flags & 1 == 0, bad("an encrypted entry"));
        let (method, crc) = (f(10, 2)? as u16, f(16, 4)? as u32);
        let (mut compressed, mut size) = (f(20, 4)?, f(24, 4)?);
        let (name_len, extra_len, comment_len) = (f(28, 2)? as usize, f(30, 2)? as usize, f(32, 2)? as usize);
        let mut local = f(42, 4)?;
        let name = z.get(at + 46..at + 46 + name_len).filter(|_| at + 46 + name_len <= end);
        let name = std::str::from_utf8(name.ok_or_else(|| bad("an entry name is cut short"))?)
            .map_err(|_| bad("an entry name is not UTF-8"))?
            .to_string();
        let extra =
            z.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(|| bad("extra field cut short"))?;
        // Zip64 sizes and offset, each present when its 32-bit field is all ones.
        let mut x = 0;
        while x + 4 <= extra.len() {
            let (id, len) = (le(extra, x, 2).unwrap_or(0), le(extra, x + 2, 2).unwrap_or(0) as usize);
            let body = extra.get(x + 4..x + 4 + len).ok_or_else(|| bad("an extra field is cut short"))?;
            if id == 1 {
                let mut k = 0;
                for v in [&mut size, &mut compressed, &mut local] {
                    if *v == 0xFFFF_FFFF {
                        *v = le(body, k, 8).ok_or_else(|| bad("a zip64 field is cut short"))?;
                        k += 8;
                    }
                }
            }
            x += 4 + len;
        }
        out.push(Entry { name, method, crc, compressed, size, local });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Reads every array of a `.npz` archive, by name (the entry name without
/// `.npy`). Stored entries are read from a memory map of the file;
/// deflated ones inflated, each checked against its CRC-32.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let map = std::sync::Arc::new(map_file(path, "a .npz archive")?);
    read_npz_bytes(Source::Map(map), &path.display().to_string(), MAX_ARRAY_BYTES)
}

/// The archive's bytes, mapped (so that stored arrays need no copy) or in memory.
enum Source {
    Map(std::sync::Arc<memmap2::Mmap>),
    Memory(Vec<u8>),
}

/// [`read_npz`] of `src`, decompressing at most `limit` bytes in all.
fn read_npz_bytes(src: Source, file: &str, limit: u64) -> Result<BTreeMap<String, Array>> {
    let z: &[u8] = match &src {
        Source::Map(m) => m,
        Source::Memory(v) => v,
    };
    let mut arrays = BTreeMap::new();
    let mut total = 0u64;
    for e in central_directory(z, file)? {
        let Some(name) = e.name.strip_suffix(".npy") else {
            bail!("{file}: entry `{}` is not a .npy array", e.name);
        };
        let origin = format!("{file}: array `{name}`");
        ensure!(!arrays.contains_key(name), "{origin} appears twice");
        total = total.saturating_add(e.size);
        ensure!(
            total <= limit,
            "{origin}: {} bytes once decompressed (the archive {total} so far); at most {limit} are read",
            e.size
        );
        let bad = |what: &str| anyhow::anyhow!("{origin}: {what}");
        let at = usize::try_from(e.local).map_err(|_| bad("local header out of range"))?;
        ensure!(le(z, at, 4) == Some(0x0403_4b50), bad("no local file header where the directory points"));
        let name_len = le(z, at + 26, 2).ok_or_else(|| bad("local header cut short"))? as usize;
        let extra_len = le(z, at + 28, 2).ok_or_else(|| bad("local header cut short"))? as usize;
        ensure!(
            z.get(at + 30..at + 30 + name_len) == Some(e.name.as_bytes()),
            bad("the local header names another file")
        );
        let start = at + 30 + name_len + extra_len;
        let end = (start as u64).checked_add(e.compressed).filter(|&x| x <= z.len() as u64);
        let end = end.ok_or_else(|| bad("the data runs past the end of the file"))? as usize;
        let data = &z[start..end];
        let bytes = match e.method {
            0 => {
                ensure!(e.compressed == e.size, bad("a stored entry whose sizes differ"));
                match &src {
                    Source::Map(m) => Bytes::Mapped(std::sync::Arc::clone(m), start..end),
                    Source::Memory(_) => Bytes::Owned(data.to_vec()),
                }
            }
            8 => {
                // Deflate expands at most 1032:1, so a size the data cannot
                // reach is not reserved up front.
                let mut out = Vec::with_capacity(e.size.min(e.compressed.saturating_mul(1032)) as usize);
                let mut dec = flate2::read::DeflateDecoder::new(data);
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut dec, e.size + 1), &mut out)
                    .map_err(|err| bad(&format!("inflating: {err}")))?;
                ensure!(
                    out.len() as u64 == e.size,
                    bad(&format!("inflates to {} bytes, not the {} declared", out.len(), e.size))
                );
                Bytes::Owned(out)
            }
            m => bail!("{origin}: compression method {m}; expected stored (0) or deflate (8)"),
        };
        let raw: &[u8] = match &bytes {
            Bytes::Mapped(m, r) => &m[r.clone()],
            Bytes::Owned(v) => v,
        };
        let mut crc = flate2::Crc::new();
        crc.update(raw);
        ensure!(crc.sum() == e.crc, bad("CRC-32 mismatch (the archive is corrupt)"));
        let (dtype, shape, off) = parse_npy(raw, &origin)?;
        let bytes = match bytes {
            Bytes::Mapped(m, r) => Bytes::Mapped(m, r.start + off..r.end),
            Bytes::Owned(mut v) => {
                v.drain(..off);
                Bytes::Owned(v)
            }
        };
        arrays.insert(name.to_string(), Array { origin, dtype, shape, bytes });
    }
    Ok(arrays)
}

/// The arrays of an `.npz` archive held in memory (for the fuzz target and
/// tests).
#[doc(hidden)]
pub fn read_npz_from(bytes: Vec<u8>, name: &str, limit: u64) -> Result<BTreeMap<String, Array>> {
    read_npz_bytes(Source::Memory(bytes), name, limit)
}

/// The arrays of a `.npy` file held in memory (for the fuzz target and tests).
#[doc(hidden)]
pub fn read_npy_from(bytes: Vec<u8>, name: &str) -> Result<Array> {
    let (dtype, shape, off) = parse_npy(&bytes, name)?;
    let mut v = bytes;
    v.drain(..off);
    Ok(Array { origin: name.to_string(), dtype, shape, bytes: Bytes::Owned(v) })
}

/// The `(x, y)` of a Keras dataset split: `x` u8, float32 or float64 of
/// shape `(N, ...)`, `y` integer class ids `(N,)` or one-hot `(N, C)`.
#[derive(Debug)]
pub struct Labeled {
    /// The file the arrays came from.
    pub file: PathBuf,
    /// `x`, one row per sample.
    pub x: Array,
    /// The labels as class ids.
    pub labels: Vec<u8>,
    /// Values per sample (the product of `x`'s other dimensions).
    pub width: usize,
}

/// Class ids from `y`: integers `(N,)` in 0..=255, or one-hot `(N, C)`
/// (each row all zeros but one 1), read element by element (no copy of
/// `y` larger than the `N` labels).
pub fn labels_of(y: &Array, n: usize) -> Result<Vec<u8>> {
    let o = y.origin();
    match y.shape() {
        [m] => {
            ensure!(*m == n, "{o}: {m} labels for {n} samples; expected one per sample");
            ensure!(
                !matches!(y.dtype(), Dtype::F32 | Dtype::F64),
                "{o}: {} values are not class ids; expected integers",
                y.dtype().name()
            );
            (0..n)
                .map(|i| {
                    let v = y.int_at(i).unwrap_or(-1);
                    u8::try_from(v)
                        .map_err(|_| anyhow::anyhow!("{o}: label {v} at index {i} is not a class id in 0..=255"))
                })
                .collect()
        }
        [m, c] => {
            ensure!(*m == n, "{o}: {m} label rows for {n} samples; expected one per sample");
            ensure!((1..=256).contains(c), "{o}: one-hot rows of {c} classes; expected 1 to 256");
            (0..n)
                .map(|i| {
                    let mut hot = None;
                    for j in 0..*c {
                        match y.f64_at(i * c + j) {
                            0.0 => {}
                            1.0 if hot.is_none() => hot = Some(j as u8),
                            _ => bail!("{o}: row {i} is not one-hot (one 1, the rest 0)"),
                        }
                    }
                    hot.ok_or_else(|| anyhow::anyhow!("{o}: row {i} is not one-hot (one 1, the rest 0)"))
                })
                .collect()
        }
        s => bail!("{o}: labels of shape {s:?}; expected (N,) class ids or (N, C) one-hot"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file of `descr` and `shape` with `data`.
    pub(crate) fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn npy_headers_are_parsed_strictly() {
        let a = read_npy_from(npy("<f4", "(2, 3)", &[0; 24]), "a.npy").unwrap();
        assert_eq!((a.dtype(), a.shape()), (Dtype::F32, &[2usize, 3][..]));
        assert_eq!(read_npy_from(npy("|u1", "(4,)", &[1, 2, 3, 4]), "b").unwrap().as_u8(), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(read_npy_from(npy("<i8", "()", &[7, 0, 0, 0, 0, 0, 0, 0]), "s").unwrap().to_i64().unwrap(), [7]);
        let err = |b: Vec<u8>| format!("{:#}", read_npy_from(b, "x.npy").unwrap_err());
        assert!(err(npy("<f4", "(2, 3)", &[0; 20])).contains("needs 24 bytes of data, but the array has 20"));
        assert!(err(npy(">f4", "(1,)", &[0; 4])).contains("big-endian"));
        assert!(err(npy("<c8", "(1,)", &[0; 8])).contains("dtype <c8 is not read"));
        assert!(err(npy("<f4", "(1, x)", &[0; 4])).contains("`x` is not a dimension"));
        assert!(err(npy("<f4", "(99999999999, 99999999999, 99999999999)", &[])).contains("overflows"));
        assert!(err(b"NUMPY".to_vec()).contains("no \\x93NUMPY magic"));
        let mut fortran = npy("<f4", "(1,)", &[0; 4]);
        let i = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[i..i + 5].copy_from_slice(b"True ");
        assert!(err(fortran).contains("Fortran order"));
        let mut long = npy("<f4", "(1,)", &[0; 4]);
        long[8] = 0xff;
        assert!(err(long).contains("past the end"));
        assert!(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}").is_err());
        assert!(parse_dict("{'descr': '<f4', 'shape': (1,)}").is_err());
        assert_eq!(parse_shape("()").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_shape("(5,)").unwrap(), vec![5]);
        assert!(parse_shape("(,)").is_err() && parse_shape("(1,,2)").is_err() && parse_shape("5").is_err());
    }

    #[test]
    fn labels_are_class_ids_or_one_hot_rows() {
        let ids = read_npy_from(npy("<i4", "(3,)", &[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]), "y").unwrap();
        assert_eq!(labels_of(&ids, 3).unwrap(), [1, 9, 0]);
        assert!(labels_of(&ids, 4).unwrap_err().to_string().contains("3 labels for 4 samples"));
        let neg = read_npy_from(npy("|i1", "(1,)", &[0xff]), "y").unwrap();
        assert!(labels_of(&neg, 1).unwrap_err().to_string().contains("label -1 at index 0"));
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let hot = read_npy_from(npy("<f4", "(2, 3)", &f(&[0., 0., 1., 1., 0., 0.])), "y").unwrap();
        assert_eq!(labels_of(&hot, 2).unwrap(), [2, 0]);
        let two = read_npy_from(npy("<f4", "(1, 3)", &f(&[1., 0., 1.])), "y").unwrap();
        assert!(labels_of(&two, 1).unwrap_err().to_string().contains("row 0 is not one-hot"));
        let fl = read_npy_from(npy("<f4", "(1,)", &f(&[1.0])), "y").unwrap();
        assert!(labels_of(&fl, 1).unwrap_err().to_string().contains("not class ids"));
        let b = read_npy_from(npy("|b1", "(2,)", &[1, 0]), "y").unwrap();
        assert_eq!(labels_of(&b, 2).unwrap(), [1, 0]);
        let none = read_npy_from(npy("<f4", "(1, 2)", &f(&[0., 0.])), "y").unwrap();
        assert!(labels_of(&none, 1).unwrap_err().to_string().contains("row 0 is not one-hot"));
    }
}
