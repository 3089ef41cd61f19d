//! Turning any image into a 28x28 MNIST-style digit, as the training data
//! was made: grayscale, light ink on a black background, the ink's bounding
//! box scaled so its longer side is 20 pixels (aspect ratio kept), placed in
//! 28x28 so that its centre of mass sits at the centre.

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};
use std::path::Path;

/// Side of the output.
pub const SIDE: usize = 28;
/// Longer side of the digit's box inside the output (as in MNIST).
const BOX: usize = 20;
/// Largest image accepted (width x height), against decompression bombs
/// and to bound memory: 16 Mpx (4096 x 4096; a 12 Mpx phone photo fits).
/// Decoding one costs at most [`BYTES_PER_PIXEL`] bytes a pixel, about
/// 200 MB at the cap.
pub const MAX_PIXELS: u64 = 1 << 24;

/// The most memory decoding takes per pixel: the decoded image at up to 8
/// bytes a pixel (16-bit RGBA; deeper formats are refused by the decoder's
/// allocation limit) and the grayscale result at 4.
pub const BYTES_PER_PIXEL: u64 = 12;

/// The largest image file read (it is read whole before decoding): above
/// any image of [`MAX_PIXELS`] in a compressed format (16-bit RGBA stored
/// uncompressed is 128 MiB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Whether to invert the image (MNIST digits are light ink on black).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invert {
    /// Invert when the border of the image is mostly light.
    Guess,
    /// Always invert (dark ink on a light background).
    Yes,
    /// Never invert.
    No,
}

/// Decodes `path` (any format the `image` crate reads; EXIF orientation
/// applied; at most [`MAX_PIXELS`]) into grayscale values in `[0, 1]`,
/// transparent parts composited onto the background, row-major
/// `(height, width)`.
pub fn load_gray(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let bytes = crate::fsutil::read_capped(path, MAX_FILE_BYTES, "an image file")?;
    decode_gray(&bytes, path, MAX_PIXELS)
}

/// [`load_gray`] on the bytes of an image file already in memory, accepting
/// at most `max_pixels`; `path` names the file in errors and, when the
/// content matches no known format, its extension is tried. Any byte string
/// gives an image or an error, never a panic (fuzzed:
/// `fuzz/fuzz_targets/image.rs`).
pub fn decode_gray(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<(Vec<f32>, usize, usize)> {
    if bytes.is_empty() {
        bail!("{}: the file is empty (0 bytes), not an image", path.display());
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if reader.format().is_none() {
        if let Ok(format) = image::ImageFormat::from_path(path) {
            reader.set_format(format);
        }
    }
    if reader.format().is_none() {
        bail!("{}: not an image in a supported format (PNG, JPEG, BMP, GIF, PNM, WebP, TIFF, ICO)", path.display());
    }
    let mut limits = image::Limits::default();
    // The decoded image at 16-bit RGBA: deeper ones are refused, so the
    // whole decode stays within `max_pixels * BYTES_PER_PIXEL`.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().with_context(|| format!("{}: cannot decode", path.display()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        bail!("{}: the image is empty ({h}x{w})", path.display());
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        bail!("{}: {h}x{w} pixels (rows x columns) is more than the {max_pixels} accepted", path.display());
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).with_context(|| format!("{}: corrupt image data", path.display()))?;
    let (gray, h, w) = composite_gray(&img);
    drop(img);
    // Turned once gray (4 bytes a pixel), not as decoded (up to 8).
    let gray = GrayF32::from_raw(w as u32, h as u32, gray).expect("h * w values");
    let gray = orient(gray, orientation);
    let (w, h) = gray.dimensions();
    Ok((gray.into_raw(), h as usize, w as usize))
}

type GrayF32 = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// `img` turned as EXIF `orientation` says (as `DynamicImage::apply_orientation`).
fn orient(mut img: GrayF32, orientation: Orientation) -> GrayF32 {
    use image::imageops::{flip_horizontal_in_place, flip_vertical_in_place, rotate180_in_place, rotate270, rotate90};
    match orientation {
        Orientation::NoTransforms => {}
        Orientation::Rotate90 => img = rotate90(&img),
        Orientation::Rotate180 => rotate180_in_place(&mut img),
        Orientation::Rotate270 => img = rotate270(&img),
        Orientation::FlipHorizontal => flip_horizontal_in_place(&mut img),
        Orientation::FlipVertical => flip_vertical_in_place(&mut img),
        Orientation::Rotate90FlipH => {
            img = rotate90(&img);
            flip_horizontal_in_place(&mut img);
        }
        Orientation::Rotate270FlipH => {
            img = rotate270(&img);
            flip_horizontal_in_place(&mut img);
        }
    }
    img
}

/// `img` as grayscale values in `[0, 1]`, `(height, width)` row-major, its
/// transparent parts composited onto the background. Converted a band of
/// rows at a time, so that no full-size float copy of the image is made.
fn composite_gray(img: &DynamicImage) -> (Vec<f32>, usize, usize) {
    const BAND: u32 = 64;
    let (w, h) = (img.width(), img.height());
    let luma = |p: &image::Rgba<f32>| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let bands = || (0..h).step_by(BAND as usize).map(move |y| img.crop_imm(0, y, w, BAND.min(h - y)).to_rgba32f());
    // Transparent pixels are background: composite onto the colour opposite
    // to the opaque pixels' average (so ink stays ink whatever its colour).
    let (mut sum, mut weight) = (0f64, 0f64);
    for band in bands() {
        for p in band.pixels() {
            sum += f64::from(luma(p) * p[3]);
            weight += f64::from(p[3]);
        }
    }
    let background = if weight > 0.0 && sum / weight > 0.5 { 0.0 } else { 1.0 };
    let mut gray = Vec::with_capacity(w as usize * h as usize);
    for band in bands() {
        gray.extend(band.pixels().map(|p| (luma(p) * p[3] + background * (1.0 - p[3])).clamp(0.0, 1.0)));
    }
    (gray, h as usize, w as usize)
}

/// MNIST's preprocessing of a grayscale image `(h, w)` (values in `[0, 1]`)
/// into 28x28 u8 pixels. Fails when there is no ink.
pub fn to_mnist(gray: &[f32], h: usize, w: usize, invert: Invert) -> Result<[u8; SIDE * SIDE]> {
    assert_eq!(gray.len(), h * w);
    let border: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .filter(|&(y, x)| y == 0 || x == 0 || y + 1 == h || x + 1 == w)
        .map(|(y, x)| gray[y * w + x])
        .collect();
    let light = border.iter().sum::<f32>() / border.len() as f32 > 0.5;
    let flip = match invert {
        Invert::Guess => light,
        Invert::Yes => true,
        Invert::No => false,
    };
    // The background level (the border's median) becomes 0, full ink 1.
    let mut b: Vec<f32> = border.iter().map(|&v| if flip { 1.0 - v } else { v }).collect();
    b.sort_by(f32::total_cmp);
    let bg = b[b.len() / 2].min(0.9);
    // One full-size copy, not two: memory is bounded per pixel.
    let ink: Vec<f32> = gray.iter().map(|&v| (((if flip { 1.0 - v } else { v }) - bg) / (1.0 - bg)).max(0.0)).collect();
    let peak = ink.iter().cloned().fold(0f32, f32::max);
    if peak < 0.1 {
        bail!("no ink found: the image is blank (all background)");
    }
    // Bounding box of the ink: pixels above a tenth of the strongest (lower
    // thresholds let JPEG ringing around the strokes widen the box).
    let on = |v: f32| v > 0.1 * peak;
    let rows: Vec<usize> = (0..h).filter(|&y| (0..w).any(|x| on(ink[y * w + x]))).collect();
    let cols: Vec<usize> = (0..w).filter(|&x| (0..h).any(|y| on(ink[y * w + x]))).collect();
    let (y0, y1, x0, x1) = (rows[0], rows[rows.len() - 1] + 1, cols[0], cols[cols.len() - 1] + 1);
    let (bh, bw) = (y1 - y0, x1 - x0);
    // Scale the box so its longer side is BOX pixels, by area averaging.
    let scale = BOX as f32 / bh.max(bw) as f32;
    let (oh, ow) = (((bh as f32 * scale).round() as usize).max(1), ((bw as f32 * scale).round() as usize).max(1));
    let mut small = vec![0f32; oh * ow];
    for (oy, row) in small.chunks_exact_mut(ow).enumerate() {
        for (ox, out) in row.iter_mut().enumerate() {
            *out = area_average(&ink, w, (y0, x0), (bh, bw), (oy, ox), (oh, ow));
        }
    }
    // Place so the centre of mass is at pixel (14, 14), as in MNIST
    // (measured on its test set: the mean centre of mass is (13.99, 14.01)
    // in pixel indices).
    let total: f32 = small.iter().sum();
    let (mut cy, mut cx) = (0f32, 0f32);
    for (i, &v) in small.iter().enumerate() {
        cy += v * (i / ow) as f32;
        cx += v * (i % ow) as f32;
    }
    let (cy, cx) = (cy / total, cx / total);
    let (dy, dx) = ((SIDE as f32 / 2.0 - cy).round() as isize, (SIDE as f32 / 2.0 - cx).round() as isize);
    let mut out = [0u8; SIDE * SIDE];
    for (i, &v) in small.iter().enumerate() {
        let (y, x) = ((i / ow) as isize + dy, (i % ow) as isize + dx);
        if (0..SIDE as isize).contains(&y) && (0..SIDE as isize).contains(&x) {
            out[y as usize * SIDE + x as usize] = (v.min(1.0) * 255.0).round() as u8;
        }
    }
    Ok(out)
}

/// Mean of the source box area that output pixel `(oy, ox)` of an
/// `(oh, ow)` image covers, the box being `(bh, bw)` at `(y0, x0)` of a
/// source of width `w` (fractional overlaps weighted).
fn area_average(
    src: &[f32],
    w: usize,
    (y0, x0): (usize, usize),
    (bh, bw): (usize, usize),
    (oy, ox): (usize, usize),
    (oh, ow): (usize, usize),
) -> f32 {
    let (sy0, sy1) = (oy as f32 * bh as f32 / oh as f32, (oy + 1) as f32 * bh as f32 / oh as f32);
    let (sx0, sx1) = (ox as f32 * bw as f32 / ow as f32, (ox + 1) as f32 * bw as f32 / ow as f32);
    let (mut sum, mut area) = (0f32, 0f32);
    for y in sy0.floor() as usize..(sy1.ceil() as usize).min(bh) {
        let fy = (sy1.min(y as f32 + 1.0) - sy0.max(y as f32)).max(0.0);
        for x in sx0.floor() as usize..(sx1.ceil() as usize).min(bw) {
            let fx = (sx1.min(x as f32 + 1.0) - sx0.max(x as f32)).max(0.0);
            sum += fy * fx * src[(y0 + y) * w + x0 + x];
            area += fy * fx;
        }
    }
    if area > 0.0 {
        sum / area
    } else {
        0.0
    }
}

/// An image of `cols` pixels per row (row-major; e.g. a 28x28 digit with
/// `cols = 28`) in the terminal, one line per row and two characters per
/// pixel so that the picture keeps its aspect ratio (Unicode half blocks
/// would need colour; shades work everywhere). A trailing partial row is
/// not drawn; `cols = 0` draws nothing.
pub fn render(pixels: &[u8], cols: usize) -> String {
    const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];
    let mut s = String::new();
    // chunks_exact panics on 0.
    if cols == 0 {
        return s;
    }
    for row in pixels.chunks_exact(cols) {
        for &p in row {
            let c = SHADES[(usize::from(p) * (SHADES.len() - 1) + 127) / 255];
            s.push(c);
            s.push(c);
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark "1" (a vertical bar) on white, 60x40.
    fn bar(h: usize, w: usize) -> Vec<f32> {
        let mut g = vec![1.0f32; h * w];
        for y in 10..50 {
            for x in 18..22 {
                g[y * w + x] = 0.0;
            }
        }
        g
    }

    #[test]
    fn a_dark_bar_on_white_becomes_a_centred_light_bar() {
        let out = to_mnist(&bar(60, 40), 60, 40, Invert::Guess).unwrap();
        // The 40x4 box becomes 20x2 with its centre of mass at index
        // (9.5, 0.5), moved by round(14 - 9.5) = 5 rows and round(13.5) =
        // 14 columns: rows 5..=24, columns 14..=15.
        let lit_rows: Vec<usize> = (0..SIDE).filter(|&y| (0..SIDE).any(|x| out[y * SIDE + x] > 128)).collect();
        assert_eq!((lit_rows.first(), lit_rows.last()), (Some(&5), Some(&24)));
        let lit_cols: Vec<usize> = (0..SIDE).filter(|&x| (0..SIDE).any(|y| out[y * SIDE + x] > 128)).collect();
        assert_eq!(lit_cols, vec![14, 15]);
        assert_eq!(out[0], 0, "the background is black");
    }

    #[test]
    fn inversion_can_be_forced_and_blank_images_are_errors() {
        // Not inverting a dark-on-white image leaves white everywhere but
        // the bar: the "ink" is the background, which is not a digit-sized box.
        let e = to_mnist(&vec![1.0; 100], 10, 10, Invert::Guess).unwrap_err();
        assert!(e.to_string().contains("no ink found"), "{e}");
        let e = to_mnist(&vec![0.0; 100], 10, 10, Invert::No).unwrap_err();
        assert!(e.to_string().contains("no ink found"), "{e}");
        let forced = to_mnist(&bar(60, 40), 60, 40, Invert::Yes).unwrap();
        assert_eq!(forced, to_mnist(&bar(60, 40), 60, 40, Invert::Guess).unwrap());
    }

    #[test]
    fn render_draws_any_shape() {
        // 2 rows of 3: black, mid grey, white; then white, black, black.
        let s = render(&[0, 128, 255, 255, 0, 0], 3);
        assert_eq!(s, "  ▒▒██\n██    \n");
        assert_eq!(render(&[255; 4], 1).lines().count(), 4);
        assert_eq!(render(&[255; 4], 0), "");
    }

    #[test]
    fn a_normalised_digit_only_moves_to_its_centre_of_mass() {
        // A 20x9 block (already 20 px tall, so not rescaled) at rows 4..=23,
        // columns 10..=18: centre of mass (13.5, 14) -> moved down one row.
        let mut g = vec![0f32; SIDE * SIDE];
        for y in 4..24 {
            for x in 10..19 {
                g[y * SIDE + x] = 1.0;
            }
        }
        let out = to_mnist(&g, SIDE, SIDE, Invert::No).unwrap();
        for y in 0..SIDE {
            for x in 0..SIDE {
                let want = if (5..25).contains(&y) && (10..19).contains(&x) { 255 } else { 0 };
                assert_eq!(out[y * SIDE + x], want, "({y}, {x})");
            }
        }
    }
}
