//! Prediction from images: the preprocessing sees a photo or drawing as the
//! training data was made, and the `predict` binary's behaviour.

use image::{GrayImage, Rgba, RgbaImage};
use kiln::data::Dataset;
use kiln::model::{predict, Arch, Batch, Inputs, Model, Params};
use kiln::preprocess::{load_gray, to_mnist, Invert, SIDE};
use kiln::train::epoch_order;
use kiln_kernels::RmsProp;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// A model trained for three epochs on the vendored MNIST (shared by tests).
fn trained() -> &'static (Params<f32>, Dataset) {
    static MODEL: OnceLock<(Params<f32>, Dataset)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let cache = std::env::temp_dir().join("kiln-test-cache");
        let ds = Dataset::load(&kiln::data::default_data_dir(), &cache).unwrap();
        let be = kiln_kernels::select("auto").unwrap();
        let arch = Arch::parse("512:relu", 784, 10).unwrap();
        let mut m = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
        for epoch in 0..3 {
            for rows in epoch_order(ds.train.len(), 1, epoch).chunks(128) {
                m.train_step(Batch { inputs: Inputs::Pixels(ds.train.pixels()), labels: ds.train.labels(), rows })
                    .unwrap();
            }
        }
        (m.params(), ds)
    })
}

fn save_gray(path: &Path, pixels: &[u8], w: u32, h: u32) {
    GrayImage::from_raw(w, h, pixels.to_vec()).unwrap().save(path).unwrap();
}

/// Test digit `i` drawn dark-on-light into a `size` canvas at `(ox, oy)`,
/// scaled by `factor` (nearest neighbour).
fn variant(d: &[u8], size: u32, (ox, oy): (u32, u32), factor: u32) -> Vec<u8> {
    let mut img = vec![255u8; (size * size) as usize];
    for y in 0..SIDE as u32 * factor {
        for x in 0..SIDE as u32 * factor {
            let v = d[(y / factor) as usize * SIDE + (x / factor) as usize];
            let (cx, cy) = (ox + x, oy + y);
            if cx < size && cy < size {
                img[(cy * size + cx) as usize] = 255 - v;
            }
        }
    }
    img
}

#[test]
fn png_round_trip_matches_idx_and_variants_stay_correct() {
    let (params, ds) = trained();
    let be = kiln_kernels::select("auto").unwrap();
    let n = 1000;
    let pixels = &ds.test.pixels()[..n * 784];
    let labels = &ds.test.labels()[..n];
    let argmax = |p: &Vec<f32>| (0..10).fold(0, |b, j| if p[j] > p[b] { j } else { b });
    let direct: Vec<usize> = predict(be, params, pixels).unwrap().iter().map(argmax).collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut same, mut correct) = (0, [0usize; 3]);
    let mut inputs: [Vec<u8>; 3] = Default::default();
    for i in 0..n {
        let d = &pixels[i * 784..(i + 1) * 784];
        // 1. The digit itself as a 28x28 PNG, read back as is.
        let p = dir.path().join(format!("{i}.png"));
        save_gray(&p, d, 28, 28);
        let (g, h, w) = load_gray(&p).unwrap();
        let back: Vec<u8> = g.iter().map(|&v| (v * 255.0).round() as u8).collect();
        assert_eq!((h, w), (28, 28));
        same += usize::from(back == d);
        // 2-4. Inverted; inverted and shifted off-centre in a 64x64 canvas;
        // inverted and scaled 3x into a 120x120 canvas.
        for (k, img) in
            [variant(d, 28, (0, 0), 1), variant(d, 64, (3 + i as u32 % 30, 20), 1), variant(d, 120, (10, 25), 3)]
                .into_iter()
                .enumerate()
        {
            let size = (img.len() as f64).sqrt() as u32;
            let p = dir.path().join(format!("{i}-{k}.png"));
            save_gray(&p, &img, size, size);
            let (g, h, w) = load_gray(&p).unwrap();
            inputs[k].extend_from_slice(&to_mnist(&g, h, w, Invert::Guess).unwrap());
        }
    }
    assert_eq!(same, n, "PNG round trip changed pixels");
    for (k, inp) in inputs.iter().enumerate() {
        for (i, p) in predict(be, params, inp).unwrap().iter().enumerate() {
            correct[k] += usize::from(argmax(p) == usize::from(labels[i]));
        }
    }
    let idx_acc = direct.iter().zip(labels).filter(|(&p, &l)| p == usize::from(l)).count();
    eprintln!("of {n}: IDX correct {idx_acc}; inverted {}, shifted {}, scaled {}", correct[0], correct[1], correct[2]);
    for (k, what) in ["inverted", "inverted + shifted", "inverted + scaled 3x"].iter().enumerate() {
        assert!(correct[k] * 100 >= 95 * n, "{what}: only {} of {n} correct", correct[k]);
    }
}

#[test]
fn predict_binary_handles_files_json_and_errors() {
    let (params, ds) = trained();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    kiln::checkpoint::save(&model, params, &Default::default()).unwrap();
    let good = dir.path().join("seven.png");
    save_gray(&good, &variant(&ds.test.pixels()[..784], 60, (10, 12), 1), 60, 60);
    let blank = dir.path().join("blank.png");
    save_gray(&blank, &[255u8; 400], 20, 20);
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let mut rgba = RgbaImage::from_pixel(40, 40, Rgba([0, 0, 0, 0]));
    for y in 8..32 {
        for x in 18..22 {
            rgba.put_pixel(x, y, Rgba([20, 20, 200, 255]));
        }
    }
    let transparent = dir.path().join("one.png");
    rgba.save(&transparent).unwrap();

    let run = |args: &[&Path]| Command::new(env!("CARGO_BIN_EXE_predict")).args(args).output().unwrap();
    let o = run(&[Path::new("--model"), &model, Path::new("--json"), &good, &transparent, &blank, &broken, &text]);
    assert!(!o.status.success(), "bad files must make the exit code non-zero");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "the two good images are still predicted: {stdout}");
    assert_eq!(lines[0]["digit"], 7, "{stdout}");
    assert_eq!(lines[1]["digit"], 1, "a blue 1 on a transparent background: {stdout}");
    assert_eq!(lines[0]["probabilities"].as_array().unwrap().len(), 10);
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(stderr.contains("blank.png") && stderr.contains("no ink found"), "{stderr}");
    assert!(stderr.contains("broken.png"), "{stderr}");
    assert!(stderr.contains("notes.txt") && stderr.contains("not an image"), "{stderr}");

    let o = run(&[Path::new("--model"), &dir.path().join("missing.safetensors"), &good]);
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(!o.status.success() && stderr.contains("run `cargo run --release --bin train` first"), "{stderr}");

    let o = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--model", model.to_str().unwrap(), "--top", "3", "--show", "--idx"])
        .arg(kiln::data::default_data_dir().join("t10k-images-idx3-ubyte.gz"))
        .args(["--index", "0..2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains("[0]: 7 (") && stdout.contains("[1]: 2 ("), "{stdout}");
    assert!(stdout.contains('█'), "--show draws the digit: {stdout}");
}

#[test]
fn empty_files_and_decompression_bombs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let e = format!("{:#}", load_gray(&empty).unwrap_err());
    assert!(e.contains("empty.png") && e.contains("the file is empty (0 bytes), not an image"), "{e}");
    // 8000 x 8000 = 64 million pixels (over the 16,777,216 accepted); a
    // blank image compresses to a few hundred KB (deflate caps at ~1000:1).
    let bomb = d.path().join("bomb.png");
    GrayImage::new(8000, 8000).save(&bomb).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1_000_000, "a bomb is small on disk");
    let e = format!("{:#}", load_gray(&bomb).unwrap_err());
    assert!(
        e.contains("bomb.png") && e.contains("8000x8000 pixels (rows x columns) is more than the 16777216 accepted"),
        "{e}"
    );
}

/// The same digit saved as 8-bit gray PNG, 16-bit gray PNG, palette GIF,
/// BMP and binary PGM reaches the network as the very same 28x28 input; as a
/// (lossy) JPEG it is still predicted the same in at least 90% of cases.
#[test]
fn every_format_and_colour_type_gives_the_same_digit() {
    let (params, ds) = trained();
    let be = kiln_kernels::select("auto").unwrap();
    let d = tempfile::tempdir().unwrap();
    let argmax = |p: &Vec<f32>| (0..10).fold(0, |b, j| if p[j] > p[b] { j } else { b });
    let mut jpeg_agrees = 0;
    let n = 20;
    for i in 0..n {
        let img = variant(&ds.test.pixels()[i * 784..(i + 1) * 784], 56, (10, 12), 1);
        let dynamic = image::DynamicImage::ImageLuma8(GrayImage::from_raw(56, 56, img).unwrap());
        let input = |ext: &str, img: image::DynamicImage| {
            let p = d.path().join(format!("{i}.{ext}"));
            img.save(&p).unwrap_or_else(|e| panic!("{ext}: {e}"));
            let (g, h, w) = load_gray(&p).unwrap_or_else(|e| panic!("{ext}: {e:#}"));
            to_mnist(&g, h, w, Invert::Guess).unwrap()
        };
        let png = input("png", dynamic.clone());
        for (ext, img) in [
            ("16.png", image::DynamicImage::ImageLuma16(dynamic.to_luma16())),
            ("gif", image::DynamicImage::ImageRgba8(dynamic.to_rgba8())),
            ("bmp", image::DynamicImage::ImageRgb8(dynamic.to_rgb8())),
            ("pgm", dynamic.clone()),
        ] {
            assert_eq!(input(ext, img), png, "image {i} as {ext}");
        }
        let jpeg = input("jpg", image::DynamicImage::ImageRgb8(dynamic.to_rgb8()));
        let digits = predict(be, params, &[png, jpeg].concat()).unwrap();
        jpeg_agrees += usize::from(argmax(&digits[0]) == argmax(&digits[1]));
    }
    assert!(jpeg_agrees * 10 >= n * 9, "JPEG agreed with PNG on only {jpeg_agrees} of {n}");
}

/// The round trip a newcomer tries first: `digit --test I --png d.png`
/// then `predict d.png` gives the digit's label back, for 98 or more of the
/// first 100 test digits with a tutorial-trained model.
#[test]
fn digit_pictures_predict_as_their_labels() {
    let (params, ds) = trained();
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.safetensors");
    kiln::checkpoint::save(&model, params, &Default::default()).unwrap();
    let mut pngs = Vec::new();
    for i in 0..100 {
        let png = d.path().join(format!("d{i}.png"));
        let o = Command::new(env!("CARGO_BIN_EXE_digit"))
            .args(["--test", &i.to_string(), "--png", png.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pngs.push(png);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--json", "--model", model.to_str().unwrap()])
        .args(&pngs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let answers: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 100);
    let right = answers.iter().zip(ds.test.labels()).filter(|(a, &l)| a["digit"] == u64::from(l)).count();
    eprintln!("{right} of 100 digit pictures predicted as their label");
    assert!(right >= 98, "{right} of 100 digit pictures predicted as their label");
}
