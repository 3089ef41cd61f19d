//! A large 16-bit RGBA PNG made a row at a time, so that making it costs
//! the process nothing (tests and benchmarks that measure memory use it).

use std::io::Write;

/// A 16-bit RGBA PNG of `w x h`, black where `ink(x, y)`, else white.
pub fn png16(w: u32, h: u32, ink: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Sixteen);
    let mut header = enc.write_header().unwrap();
    let mut rows = header.stream_writer().unwrap();
    for y in 0..h {
        let row: Vec<u8> = (0..w)
            .flat_map(|x| {
                let v = if ink(x, y) { 0u8 } else { 255 };
                [v, v, v, v, v, v, 255, 255]
            })
            .collect();
        rows.write_all(&row).unwrap();
    }
    rows.finish().unwrap();
    header.finish().unwrap();
    bytes
}
