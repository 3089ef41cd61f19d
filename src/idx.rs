//! The IDX header format (LeCun's MNIST files), parsed and validated from
//! bytes. Pure functions: no files, so every malformed case is testable.
//!
//! Layout: a big-endian `u32` magic made of two zero bytes, a type byte
//! (`0x08` = unsigned byte) and the number of dimensions; then one big-endian
//! `u32` per dimension; then the data, row-major, exactly as many bytes as the
//! product of the dimensions.
//!
//! Images may have any size of at least 1x1 pixels: the loader checks that
//! a dataset's splits agree, and the model checks its input width.

use byteorder::{BigEndian, ByteOrder};
use std::fmt;

/// The type byte for unsigned 8-bit data, the only one kiln reads.
const TYPE_U8: u8 = 0x08;

/// What a file is expected to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `(count, rows, cols)` u8 images, magic `0x00000803`.
    Images,
    /// `(count)` u8 labels, magic `0x00000801`.
    Labels,
}

impl Kind {
    fn ndims(self) -> u8 {
        match self {
            Kind::Images => 3,
            Kind::Labels => 1,
        }
    }
    fn magic(self) -> u32 {
        u32::from(TYPE_U8) << 8 | u32::from(self.ndims())
    }
    fn other(self) -> Kind {
        match self {
            Kind::Images => Kind::Labels,
            Kind::Labels => Kind::Images,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, dims) = match self {
            Kind::Images => ("images", "3 dimensions"),
            Kind::Labels => ("labels", "1 dimension"),
        };
        write!(f, "an IDX {what} file ({dims}, magic 0x{:08X})", self.magic())
    }
}

/// A validated header: the item count, the image shape and where the
/// payload starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The first dimension: how many images or labels.
    pub count: usize,
    /// Rows of each image, at least 1; 1 for a labels file (a label is one
    /// byte, so `count * rows * cols` is the payload length for both kinds).
    pub rows: usize,
    /// Columns of each image, at least 1; 1 for a labels file.
    pub cols: usize,
    /// Byte offset of the payload (the header's length).
    pub offset: usize,
    /// Payload length in bytes (`count * rows * cols`).
    pub bytes: usize,
}

fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown type",
    }
}

/// Parses and validates the header of `bytes` as a file of `kind`. The error
/// is one sentence without the file's name (the caller prefixes it).
pub fn parse(bytes: &[u8], kind: Kind) -> Result<Header, String> {
    if bytes.is_empty() {
        return Err(format!("the file is empty (0 bytes); expected {kind}"));
    }
    if bytes.starts_with(&[0x1F, 0x8B]) {
        return Err("holds gzip-compressed data but its name does not end in .gz \
                    (hint: add the .gz suffix, or decompress it with gunzip)"
            .to_string());
    }
    if bytes.len() < 4 {
        return Err(format!("the file is too short ({} bytes) to hold an IDX header of at least 4 bytes", bytes.len()));
    }
    let magic = BigEndian::read_u32(bytes);
    let swapped = magic.swap_bytes();
    if bytes[0] != 0 || bytes[1] != 0 {
        if swapped >> 16 == 0 && (swapped >> 8) as u8 == TYPE_U8 {
            return Err(format!(
                "the magic number 0x{magic:08X} is byte-swapped (written little-endian); \
                 IDX is big-endian, expected 0x{:08X}",
                kind.magic()
            ));
        }
        return Err(format!("not an IDX file: magic number 0x{magic:08X}, expected 0x{:08X} for {kind}", kind.magic()));
    }
    let (ty, ndims) = (bytes[2], bytes[3]);
    if ty != TYPE_U8 {
        return Err(format!(
            "element type 0x{ty:02X} ({}) is not supported; expected 0x08 (unsigned byte)",
            type_name(ty)
        ));
    }
    if ndims != kind.ndims() {
        if ndims == kind.other().ndims() {
            return Err(format!(
                "this is {}, but {kind} was expected (hint: are the images and labels files swapped?)",
                kind.other()
            ));
        }
        return Err(format!("has {ndims} dimensions; expected {kind}"));
    }
    let offset = 4 + 4 * usize::from(ndims);
    if bytes.len() < offset {
        return Err(format!(
            "the file is too short ({} bytes) for its {offset}-byte header of {ndims} dimensions",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..offset].chunks_exact(4).map(|c| BigEndian::read_u32(c) as usize).collect();
    // Checked before the payload: a 0-pixel image would otherwise surface as
    // a confusing "expected 0 bytes".
    if kind == Kind::Images && (dims[1] == 0 || dims[2] == 0) {
        return Err(format!("the images are {}x{}; expected at least 1x1 pixels", dims[1], dims[2]));
    }
    let shown = dims.iter().map(usize::to_string).collect::<Vec<_>>().join(" x ");
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("the dimensions {shown} overflow: their product does not fit in memory"))?;
    let payload = bytes.len() - offset;
    if payload != len {
        let detail = if payload < len {
            let short = len - payload;
            format!("{short} byte{} short (truncated?)", if short == 1 { "" } else { "s" })
        } else {
            format!("{} trailing byte{}", payload - len, if payload - len == 1 { "" } else { "s" })
        };
        return Err(format!("the payload is {payload} bytes, expected {len} (= {shown}): {detail}"));
    }
    let (rows, cols) = match kind {
        Kind::Images => (dims[1], dims[2]),
        Kind::Labels => (1, 1),
    };
    Ok(Header { count: dims[0], rows, cols, offset, bytes: len })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed file of `kind` with `count` items, then `tweak` applied.
    fn file(kind: Kind, dims: &[u32], payload: usize) -> Vec<u8> {
        let mut v = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        let _ = kind;
        v.resize(v.len() + payload, 7);
        v
    }

    fn err(bytes: &[u8], kind: Kind) -> String {
        parse(bytes, kind).expect_err("should be rejected")
    }

    #[test]
    fn accepts_well_formed_files() {
        let h = parse(&file(Kind::Images, &[3, 28, 28], 3 * 784), Kind::Images).unwrap();
        assert_eq!(h, Header { count: 3, rows: 28, cols: 28, offset: 16, bytes: 3 * 784 });
        let h = parse(&file(Kind::Labels, &[5], 5), Kind::Labels).unwrap();
        assert_eq!(h, Header { count: 5, rows: 1, cols: 1, offset: 8, bytes: 5 });
        // Zero items is a valid file (the loader rejects an empty dataset).
        assert_eq!(parse(&file(Kind::Labels, &[0], 0), Kind::Labels).unwrap().count, 0);
    }

    #[test]
    fn rejects_empty_and_short_files() {
        assert!(err(&[], Kind::Images).contains("the file is empty (0 bytes)"));
        assert!(err(&[0, 0, 8], Kind::Labels).contains("too short (3 bytes)"));
        let header_cut = &file(Kind::Images, &[3, 28, 28], 0)[..10];
        assert!(err(header_cut, Kind::Images).contains("too short (10 bytes) for its 16-byte header"));
    }

    #[test]
    fn rejects_gzip_bytes() {
        assert!(err(&[0x1F, 0x8B, 8, 0, 0, 0], Kind::Images).contains("gzip-compressed"));
    }

    #[test]
    fn rejects_swapped_kinds() {
        let labels = file(Kind::Labels, &[5], 5);
        let e = err(&labels, Kind::Images);
        assert!(e.contains("this is an IDX labels file") && e.contains("images file"), "{e}");
        assert!(e.contains("swapped"), "{e}");
        let images = file(Kind::Images, &[1, 28, 28], 784);
        assert!(err(&images, Kind::Labels).contains("this is an IDX images file"));
    }

    #[test]
    fn rejects_byte_swapped_magic() {
        let mut v = file(Kind::Images, &[1, 28, 28], 784);
        v[..4].copy_from_slice(&[3, 8, 0, 0]);
        let e = err(&v, Kind::Images);
        assert!(e.contains("0x03080000 is byte-swapped") && e.contains("expected 0x00000803"), "{e}");
    }

    #[test]
    fn rejects_other_magic() {
        let e = err(b"PK\x03\x04rest", Kind::Images);
        assert!(e.contains("not an IDX file: magic number 0x504B0304"), "{e}");
    }

    #[test]
    fn rejects_other_types() {
        let mut v = file(Kind::Images, &[1, 28, 28], 784);
        v[2] = 0x0D;
        assert!(err(&v, Kind::Images).contains("element type 0x0D (f32) is not supported"));
    }

    #[test]
    fn rejects_wrong_dimension_counts() {
        let v = file(Kind::Images, &[1, 28, 28, 1], 784);
        assert!(err(&v, Kind::Images).contains("has 4 dimensions; expected an IDX images file (3 dimensions"));
    }

    #[test]
    fn rejects_overflowing_dimensions() {
        let v = file(Kind::Images, &[u32::MAX, u32::MAX, u32::MAX], 0);
        let e = err(&v, Kind::Images);
        assert!(e.contains("4294967295 x 4294967295 x 4294967295 overflow"), "{e}");
    }

    #[test]
    fn rejects_payload_length_mismatch() {
        let short = file(Kind::Images, &[2, 28, 28], 2 * 784 - 1);
        let e = err(&short, Kind::Images);
        assert!(e.contains("payload is 1567 bytes, expected 1568 (= 2 x 28 x 28): 1 byte short"), "{e}");
        let long = file(Kind::Labels, &[4], 7);
        assert!(err(&long, Kind::Labels).contains("payload is 7 bytes, expected 4 (= 4): 3 trailing bytes"));
    }

    #[test]
    fn accepts_images_of_any_size() {
        let h = parse(&file(Kind::Images, &[2, 32, 32], 2 * 32 * 32), Kind::Images).unwrap();
        assert_eq!(h, Header { count: 2, rows: 32, cols: 32, offset: 16, bytes: 2 * 32 * 32 });
        // Not square, and the smallest possible.
        let h = parse(&file(Kind::Images, &[3, 27, 29], 3 * 27 * 29), Kind::Images).unwrap();
        assert_eq!((h.rows, h.cols, h.bytes), (27, 29, 3 * 27 * 29));
        let h = parse(&file(Kind::Images, &[4, 1, 1], 4), Kind::Images).unwrap();
        assert_eq!((h.count, h.rows, h.cols), (4, 1, 1));
    }

    #[test]
    fn rejects_images_of_zero_pixels() {
        let e = err(&file(Kind::Images, &[2, 0, 28], 0), Kind::Images);
        assert_eq!(e, "the images are 0x28; expected at least 1x1 pixels");
        assert!(err(&file(Kind::Images, &[2, 28, 0], 0), Kind::Images).contains("the images are 28x0"));
        // Even with no images, and before the payload length is compared.
        assert!(err(&file(Kind::Images, &[0, 0, 0], 5), Kind::Images).contains("the images are 0x0"));
    }
}
