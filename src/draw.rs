//! Pictures without system libraries: an RGB canvas with rectangles, lines
//! and a built-in 5x7 bitmap font (digits, capital letters, a little
//! punctuation), saved as PNG atomically. Used for the training chart, the
//! confusion matrix, the grid of misclassified digits and single digits.

use crate::fsutil::write_atomic;
use anyhow::{Context, Result};
use image::{ImageEncoder, RgbImage};
use std::path::Path;

/// An RGB colour.
pub type Rgb = [u8; 3];
/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// Grey for axes and grids.
pub const GREY: Rgb = [170, 170, 170];
/// The loss curve.
pub const BLUE: Rgb = [31, 119, 180];
/// The accuracy curve.
pub const ORANGE: Rgb = [230, 120, 20];
/// Misclassification labels.
pub const RED: Rgb = [200, 30, 30];

/// The 5x7 glyphs: each row is 5 characters, `#` lit.
fn glyph(c: char) -> Option<[&'static str; 7]> {
    Some(match c.to_ascii_uppercase() {
        '0' => [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
        '1' => ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
        '2' => [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
        '3' => ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
        '4' => ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
        '5' => ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
        '6' => ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
        '7' => ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
        '8' => [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
        '9' => [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
        'A' => [" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
        'B' => ["#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "],
        'C' => [" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "],
        'D' => ["#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "],
        'E' => ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"],
        'F' => ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "],
        'G' => [" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"],
        'H' => ["#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
        'I' => [" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
        'K' => ["#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"],
        'L' => ["#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"],
        'M' => ["#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"],
        'N' => ["#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"],
        'O' => [" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
        'P' => ["#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "],
        'R' => ["#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"],
        'S' => [" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "],
        'T' => ["#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "],
        'U' => ["#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
        'V' => ["#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "],
        'W' => ["#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "],
        'X' => ["#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"],
        'Y' => ["#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "],
        '.' => ["     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "],
        ':' => ["     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "],
        '-' => ["     ", "     ", "     ", "#####", "     ", "     ", "     "],
        '%' => ["##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"],
        '/' => ["     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "],
        '=' => ["     ", "     ", "#####", "     ", "#####", "     ", "     "],
        ' ' => ["     "; 7],
        _ => return None,
    })
}

/// An RGB picture being drawn.
pub struct Canvas {
    img: RgbImage,
}

impl Canvas {
    /// A `w x h` canvas filled with `bg`.
    pub fn new(w: u32, h: u32, bg: Rgb) -> Self {
        Canvas { img: RgbImage::from_pixel(w, h, image::Rgb(bg)) }
    }

    /// Sets one pixel (ignored outside the canvas).
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A line `thick` pixels wide (Bresenham, with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(x - thick / 2, y - thick / 2, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in the 5x7 font, each font pixel `scale` pixels; unknown
    /// characters are drawn as blanks. Returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) -> i64 {
        let mut cx = x;
        for ch in s.chars() {
            if let Some(g) = glyph(ch) {
                for (gy, row) in g.iter().enumerate() {
                    for (gx, bit) in row.chars().enumerate() {
                        if bit == '#' {
                            self.rect(cx + gx as i64 * scale, y + gy as i64 * scale, scale, scale, c);
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }

    /// Width of `s` in the font at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }

    /// A grayscale image of `cols` pixels per row (row-major) at `(x, y)`,
    /// each pixel `scale` pixels, white ink on black; `cols = 0` draws
    /// nothing.
    pub fn digit(&mut self, x: i64, y: i64, pixels: &[u8], cols: usize, scale: i64) {
        if cols == 0 {
            return;
        }
        for (i, &p) in pixels.iter().enumerate() {
            let (px, py) = ((i % cols) as i64, (i / cols) as i64);
            self.rect(x + px * scale, y + py * scale, scale, scale, [p, p, p]);
        }
    }

    /// Saves as PNG, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(self.img.as_raw(), self.img.width(), self.img.height(), image::ExtendedColorType::Rgb8)
            .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
        write_atomic(path, &bytes)
    }
}

/// The training chart: loss (left axis, blue) and accuracy (right axis,
/// orange) per epoch, with the test accuracy as a dashed line.
pub fn training_chart(path: &Path, loss: &[f64], acc: &[f64], val: (&[f64], &[f64]), test_acc: f64) -> Result<()> {
    let (val_loss, val_acc) = val;
    let (w, h) = (720i64, 420i64);
    let (l, r, t, b) = (80i64, 80i64, 50i64, 60i64);
    let mut c = Canvas::new(w as u32, h as u32, WHITE);
    c.text(l, 16, "KILN TRAINING: LOSS", 2, BLUE);
    c.text(l + Canvas::text_width("KILN TRAINING: LOSS ", 2), 16, "AND ACCURACY", 2, ORANGE);
    let (pw, ph) = (w - l - r, h - t - b);
    c.line((l, t), (l, t + ph), 2, BLACK);
    c.line((l, t + ph), (l + pw, t + ph), 2, BLACK);
    c.line((l + pw, t), (l + pw, t + ph), 2, BLACK);
    let n = loss.len().max(1);
    // Both axes on round ticks: loss from 0, accuracy (in %) up to 100.
    let top_loss = loss.iter().chain(val_loss).cloned().fold(0f64, f64::max).max(1e-9);
    let loss_axis = Ticks::new(0.0, top_loss * 1.05, 5);
    let low_acc = acc.iter().chain(val_acc).cloned().chain([test_acc]).fold(1f64, f64::min) * 100.0;
    let acc_axis = Ticks::new((low_acc - 1.0).max(0.0), 100.0, 5);
    let px = |i: usize| l + if n == 1 { pw / 2 } else { i as i64 * pw / (n as i64 - 1) };
    let py_loss = |v: f64| t + ph - (loss_axis.fraction(v) * ph as f64) as i64;
    let py_acc = |v: f64| t + ph - (acc_axis.fraction(v * 100.0) * ph as f64) as i64;
    for lv in loss_axis.values() {
        let y = py_loss(lv);
        for x in (l..l + pw).step_by(6) {
            c.set(x, y, GREY);
        }
        c.text(8, y - 7, &loss_axis.label(lv), 2, BLUE);
    }
    for av in acc_axis.values() {
        let y = t + ph - (acc_axis.fraction(av) * ph as f64) as i64;
        c.text(l + pw + 6, y - 7, &acc_axis.label(av), 2, ORANGE);
    }
    for i in 0..n {
        let label = format!("{}", i + 1);
        c.text(px(i) - Canvas::text_width(&label, 2) / 2, t + ph + 10, &label, 2, BLACK);
    }
    c.text(l + pw / 2 - Canvas::text_width("EPOCH", 2) / 2, h - 22, "EPOCH", 2, BLACK);
    // The test accuracy: a dashed line with its label at the right end, on
    // white, the dashes stopping short of it.
    let y = py_acc(test_acc);
    let label = format!("TEST {:.2}%", test_acc * 100.0);
    let lw = Canvas::text_width(&label, 2);
    let lx = l + pw - lw - 8;
    let ly = if y - 22 > t { y - 22 } else { y + 6 };
    for x in (l..lx - 6).step_by(12) {
        c.rect(x, y - 1, 6.min(lx - 6 - x), 2, ORANGE);
    }
    for (series, py, col) in [(loss, &py_loss as &dyn Fn(f64) -> i64, BLUE), (acc, &py_acc, ORANGE)] {
        for i in 0..series.len() {
            if i + 1 < series.len() {
                c.line((px(i), py(series[i])), (px(i + 1), py(series[i + 1])), 3, col);
            }
            c.rect(px(i) - 4, py(series[i]) - 4, 9, 9, col);
        }
    }
    // Validation curves: dashed, with hollow markers.
    for (series, py, col) in [(val_loss, &py_loss as &dyn Fn(f64) -> i64, BLUE), (val_acc, &py_acc, ORANGE)] {
        for i in 0..series.len() {
            if i + 1 < series.len() {
                let (a, b) = ((px(i), py(series[i])), (px(i + 1), py(series[i + 1])));
                let dashes = 8;
                for d in (0..dashes).step_by(2) {
                    let at = |f: i64| (a.0 + (b.0 - a.0) * f / dashes, a.1 + (b.1 - a.1) * f / dashes);
                    c.line(at(d), at(d + 1), 2, col);
                }
            }
            c.rect(px(i) - 5, py(series[i]) - 5, 11, 11, col);
            c.rect(px(i) - 3, py(series[i]) - 3, 7, 7, WHITE);
        }
    }
    // Last, so no curve crosses it.
    c.rect(lx - 3, ly - 3, lw + 6, 20, WHITE);
    c.text(lx, ly, &label, 2, ORANGE);
    if !val_loss.is_empty() {
        c.text(l + pw - Canvas::text_width("DASHED: VALIDATION", 2), t + 6, "DASHED: VALIDATION", 2, BLACK);
    }
    c.save(path)
}

/// Round ticks of an axis: a step of 1, 2, 2.5 or 5 times a power of ten,
/// the axis widened to whole steps around the data.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Ticks {
    /// Ticks covering `[lo, hi]` in at most `max` steps.
    fn new(lo: f64, hi: f64, max: usize) -> Self {
        let span = (hi - lo).max(1e-12);
        let raw = span / max.max(1) as f64;
        let power = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * power)
            .find(|&s| (hi / s).ceil() - (lo / s).floor() <= max as f64 + 1e-9)
            .unwrap_or(10.0 * power);
        Ticks { lo: (lo / step).floor() * step, hi: (hi / step).ceil() * step, step }
    }

    /// Where `v` sits on the axis, 0 at the bottom and 1 at the top.
    fn fraction(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }

    /// The tick values, bottom to top.
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(move |i| self.lo + i as f64 * self.step)
    }

    /// `v` with as many decimals as the step needs (0.1 -> 1, 2.5 -> 1).
    fn label(&self, v: f64) -> String {
        let mut decimals = 0;
        while decimals < 6
            && ((self.step * 10f64.powi(decimals)).round() - self.step * 10f64.powi(decimals)).abs() > 1e-9
        {
            decimals += 1;
        }
        format!("{v:.*}", decimals as usize)
    }
}

/// The confusion matrix (`C x C`) as a heatmap: row = true class, column =
/// predicted, each cell shaded by its share of the row and labelled with
/// its count while the cells are large enough to hold it.
pub fn confusion_heatmap(path: &Path, m: &[Vec<usize>]) -> Result<()> {
    let classes = m.len().max(1) as i64;
    let (cell, l, t) = ((560 / classes).clamp(12, 56), 70i64, 70i64);
    let mut c = Canvas::new((l + classes * cell + 20) as u32, (t + classes * cell + 50) as u32, WHITE);
    c.text(l, 14, "CONFUSION: TRUE ROWS / PREDICTED COLUMNS", 2, BLACK);
    let numbers = cell >= 40;
    for (i, row) in m.iter().enumerate() {
        let row_total = row.iter().sum::<usize>().max(1) as f64;
        if numbers || i % 5 == 0 {
            c.text(l - 28, t + i as i64 * cell + cell / 2 - 7, &i.to_string(), 2, BLACK);
            c.text(l + i as i64 * cell + cell / 2 - 5, t - 24, &i.to_string(), 2, BLACK);
        }
        for (j, &count) in row.iter().enumerate() {
            let share = count as f64 / row_total;
            // White -> dark blue for the diagonal, white -> red elsewhere.
            let strength = if i == j { share } else { (share * 8.0).min(1.0) };
            let base = if i == j { [20, 60, 160] } else { [200, 30, 30] };
            let col = base.map(|b: u8| (255.0 - (255.0 - f64::from(b)) * strength) as u8);
            c.rect(l + j as i64 * cell, t + i as i64 * cell, cell - 2, cell - 2, col);
            if !numbers {
                continue;
            }
            let label = count.to_string();
            let ink = if strength > 0.5 { WHITE } else { BLACK };
            let x = l + j as i64 * cell + (cell - Canvas::text_width(&label, 2)) / 2;
            c.text(x, t + i as i64 * cell + cell / 2 - 8, &label, 2, ink);
        }
    }
    c.save(path)
}

/// The whole-pixel enlargement that makes an image of `(rows, cols)` at
/// least `target` pixels on its longer side (at least 1: never shrunk), so
/// small and large images come out at a similar size.
fn scale_for(target: usize, (rows, cols): (usize, usize)) -> i64 {
    target.div_ceil(rows.max(cols).max(1)).max(1) as i64
}

/// A grid of images of shape `(rows, cols)`, each with a caption (e.g.
/// `T7 P2`), `per_row` to a row. 28x28 digits are drawn 3x (84 pixels).
pub fn digit_grid(path: &Path, digits: &[(&[u8], String)], shape: (usize, usize), per_row: usize) -> Result<()> {
    let per_row = per_row.max(1);
    let (rows, cols) = shape;
    let (scale, pad) = (scale_for(84, shape), 8i64);
    let (iw, ih) = (cols as i64 * scale, rows as i64 * scale);
    // Wide enough for the longest caption too, so captions never overlap.
    let caption_w = digits.iter().map(|(_, t)| Canvas::text_width(t, 2)).max().unwrap_or(0);
    let cw = iw.max(caption_w) + pad;
    let ch = ih + pad + 18;
    let grid_rows = digits.len().div_ceil(per_row).max(1) as i64;
    let mut c = Canvas::new((per_row as i64 * cw + pad) as u32, (grid_rows * ch + pad) as u32, WHITE);
    for (k, (px, caption)) in digits.iter().enumerate() {
        let (x, y) = (pad + (k % per_row) as i64 * cw, pad + (k / per_row) as i64 * ch);
        c.digit(x, y, px, cols, scale);
        c.text(x, y + ih + 4, caption, 2, RED);
    }
    c.save(path)
}

/// One image of shape `(rows, cols)`, enlarged (a 28x28 digit 10x, 280
/// pixels wide) and nothing else: no caption, so that the picture is the
/// digit as the network sees it and `predict` reads it back as its label
/// (a caption band would be taken for ink).
pub fn digit_png(path: &Path, pixels: &[u8], shape: (usize, usize)) -> Result<()> {
    let (rows, cols) = shape;
    let scale = scale_for(280, shape);
    let mut c = Canvas::new((cols as i64 * scale) as u32, (rows as i64 * scale) as u32, BLACK);
    c.digit(0, 0, pixels, cols, scale);
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::Ticks;

    #[test]
    fn ticks_are_round() {
        let t = Ticks::new(0.0, 0.292 * 1.05, 5);
        assert_eq!((t.lo, t.hi, t.step), (0.0, 0.4, 0.1));
        assert_eq!(t.values().map(|v| t.label(v)).collect::<Vec<_>>(), ["0.0", "0.1", "0.2", "0.3", "0.4"]);
        let a = Ticks::new(89.3, 100.0, 5);
        assert_eq!((a.lo, a.hi, a.step), (87.5, 100.0, 2.5));
        assert_eq!(a.label(92.5), "92.5");
        assert_eq!(a.label(90.0), "90.0");
        let b = Ticks::new(96.0, 100.0, 5);
        assert_eq!((b.lo, b.hi, b.step), (96.0, 100.0, 1.0));
        assert_eq!(b.label(97.0), "97");
        for (lo, hi) in [(0.0, 2.3), (0.0, 1e-9), (12.0, 100.0), (99.9, 100.0)] {
            let t = Ticks::new(lo, hi, 5);
            assert!(t.lo <= lo && t.hi >= hi && t.values().count() <= 6, "{lo}..{hi}: {t:?}");
        }
    }
}
