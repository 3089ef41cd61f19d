//! `predict`: the class (digit) of each input image (any common format, any
//! size), or of images of an IDX file, with any model written by `train`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use kiln::data;
use kiln::idx::{self, Kind};
use kiln::preprocess::{self, Invert, SIDE};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Predict the digit of any input image with a model trained by `train`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Images to classify (PNG, JPEG, BMP, GIF, PNM, WebP, TIFF, ICO)
    images: Vec<PathBuf>,
    /// The model file written by `train`
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// Print the K most likely digits
    #[arg(long, value_name = "K", default_value_t = 1, allow_negative_numbers = true)]
    top: usize,
    /// One JSON object per image on stdout
    #[arg(long)]
    json: bool,
    /// Feed 28x28 images as they are (no cropping, scaling or centring)
    #[arg(long)]
    no_preprocess: bool,
    /// Always invert (dark ink on a light background)
    #[arg(long, conflicts_with = "no_invert")]
    invert: bool,
    /// Never invert
    #[arg(long)]
    no_invert: bool,
    /// Print the 28x28 input the network saw
    #[arg(long)]
    show: bool,
    /// An IDX images file (raw or .gz) to take images from, with --index
    #[arg(long, value_name = "FILE")]
    idx: Option<PathBuf>,
    /// Which images of --idx: I, or a range I..J (J excluded)
    #[arg(long, value_name = "I[..J]", requires = "idx")]
    index: Option<String>,
    /// A NumPy .npy array of inputs to classify, one per row: (N, D) or (N, rows, cols), float32 or
    /// float64 features, or uint8 pixels
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,
    /// Kernel backend, as for train
    #[arg(long, value_name = "NAME", default_value = "auto")]
    backend: String,
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()))
}

/// The image shape a model reads: 28x28 for 784 inputs, else the shape
/// `train` recorded (`image_shape` = `RxC`), else square when the input
/// count is a square, else one row of its inputs.
fn model_shape(inputs: usize, meta: &BTreeMap<String, String>) -> (usize, usize) {
    let recorded = meta.get("image_shape").and_then(|s| {
        let (r, c) = s.split_once('x')?;
        Some((r.parse::<usize>().ok()?, c.parse::<usize>().ok()?))
    });
    let side = (inputs as f64).sqrt().round() as usize;
    match recorded {
        Some((r, c)) if r.checked_mul(c) == Some(inputs) => (r, c),
        _ if side * side == inputs => (side, side),
        _ => (1, inputs),
    }
}

/// The input of one image file for a model reading `shape` images.
fn input_of(path: &Path, args: &Args, shape: (usize, usize)) -> Result<Vec<u8>> {
    let (gray, h, w) = preprocess::load_gray(path)?;
    let invert = match (args.invert, args.no_invert) {
        (true, _) => Invert::Yes,
        (_, true) => Invert::No,
        _ => Invert::Guess,
    };
    if args.no_preprocess {
        if (h, w) != shape {
            bail!(
                "{}: --no-preprocess needs a {}x{} image (the model's input; rows x columns), this one is {h}x{w}",
                path.display(),
                shape.0,
                shape.1
            );
        }
        let light = gray.iter().sum::<f32>() / gray.len() as f32 > 0.5;
        let flip = invert == Invert::Yes || (invert == Invert::Guess && light);
        return Ok(gray.iter().map(|&v| ((if flip { 1.0 - v } else { v }) * 255.0).round() as u8).collect());
    }
    if shape != (SIDE, SIDE) {
        bail!(
            "{}: the preprocessing makes 28x28 MNIST-style digits, but this model reads {}x{} images \
             (pass --no-preprocess with images of that size, or --idx)",
            path.display(),
            shape.0,
            shape.1
        );
    }
    Ok(preprocess::to_mnist(&gray, h, w, invert).with_context(|| path.display().to_string())?.to_vec())
}

/// Images `range` of an IDX images file, which must hold images of `shape`.
fn idx_inputs(path: &Path, range: &str, shape: (usize, usize)) -> Result<Vec<(String, Vec<u8>)>> {
    let raw = kiln::fsutil::read_regular(path, data::MAX_IDX_BYTES, "an IDX file")?;
    let bytes = if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        data::gunzip(&raw, data::MAX_IDX_BYTES, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        out
    } else {
        raw
    };
    let header = idx::parse(&bytes, Kind::Images).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if (header.rows, header.cols) != shape && header.rows.checked_mul(header.cols) != Some(shape.0 * shape.1) {
        bail!(
            "{}: the images are {}x{}; expected {}x{} (the model reads {} pixels per image)",
            path.display(),
            header.rows,
            header.cols,
            shape.0,
            shape.1,
            shape.0 * shape.1
        );
    }
    let index = |v: &str| v.trim().parse::<usize>().with_context(|| format!("--index {range}: not an index or I..J"));
    let (start, end) = match range.split_once("..") {
        Some((a, b)) => (index(a)?, index(b)?),
        None => {
            let i = index(range)?;
            (i, i.saturating_add(1))
        }
    };
    if start >= end {
        bail!("--index {range}: an empty range (I..J takes images I to J-1, so J must be above I)");
    }
    if end > header.count {
        bail!("--index {range}: out of range for {} images in {}", header.count, path.display());
    }
    let d = header.rows * header.cols;
    Ok((start..end)
        .map(|i| {
            (format!("{}[{i}]", path.display()), bytes[header.offset + i * d..header.offset + (i + 1) * d].to_vec())
        })
        .collect())
}

/// The rows of a `.npy` array for a model reading `d` values: named
/// `FILE[i]`, pixels (uint8) or features (float32, float64).
fn npy_inputs(path: &Path, d: usize) -> Result<(Vec<String>, Rows)> {
    let a = kiln::npz::read_npy(path)?;
    let (n, rest) = match a.shape() {
        [n, rest @ ..] if !rest.is_empty() => (*n, rest),
        s => bail!("{}: shape {s:?}; expected (rows, values per row)", path.display()),
    };
    let width: usize = rest.iter().product();
    if width != d {
        bail!("{}: rows of {width} values (shape {:?}), but the model reads {d}", path.display(), a.shape());
    }
    let names = (0..n).map(|i| format!("{}[{i}]", path.display())).collect();
    let rows = match a.as_u8() {
        Some(p) => Rows::Pixels(p.to_vec()),
        None => Rows::Features(a.to_f32()?),
    };
    Ok((names, rows))
}

/// Inputs of a `.npy` file.
enum Rows {
    Pixels(Vec<u8>),
    Features(Vec<f32>),
}

fn run(args: Args) -> Result<bool> {
    if args.images.is_empty() && args.idx.is_none() && args.npy.is_none() {
        bail!("no input: give image files, --idx FILE --index I, or --npy FILE");
    }
    if !args.model.exists() {
        bail!(
            "{}: no such model file (hint: run `cargo run --release --bin train` first, or pass --model)",
            args.model.display()
        );
    }
    let (params, meta) = checkpoint::load(&args.model)?;
    let (inputs_n, classes) = (params.arch().inputs(), params.arch().classes());
    if args.top == 0 || args.top > classes {
        bail!("--top must be between 1 and {classes}, the model's classes (got {})", args.top);
    }
    let shape = model_shape(inputs_n, &meta);
    let be = kiln_kernels::select(&args.backend).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    let mut inputs: Vec<(String, Result<Vec<u8>>)> =
        args.images.iter().map(|p| (p.display().to_string(), input_of(p, &args, shape))).collect();
    if let Some(path) = &args.idx {
        let range = args.index.as_deref().unwrap_or("0");
        inputs.extend(idx_inputs(path, range, shape)?.into_iter().map(|(n, a)| (n, Ok(a))));
    }
    let npy = args.npy.as_deref().map(|p| npy_inputs(p, inputs_n)).transpose()?;
    let good: Vec<u8> = inputs.iter().filter_map(|(_, r)| r.as_ref().ok()).flatten().copied().collect();
    let mut probs = kiln::model::predict(be, &params, &good)?.into_iter();
    let mut all_ok = true;
    let report = |name: &str, p: &[f32], pixels: Option<&[u8]>| {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        if args.json {
            let line = json!({"file": name, "digit": order[0], "probability": p[order[0]], "probabilities": p,
                              "layers": params.arch().spec(), "inputs": inputs_n, "classes": classes});
            kiln::outln!("{line}");
        } else {
            let best: Vec<String> = order[..args.top].iter().map(|&d| format!("{d} ({:.1}%)", 100.0 * p[d])).collect();
            kiln::outln!("{name}: {}", best.join(", "));
        }
        if let (true, Some(pixels)) = (args.show, pixels) {
            kiln::outln!("{}", preprocess::render(pixels, shape.1).trim_end_matches('\n'));
        }
    };
    for (name, input) in &inputs {
        match input {
            Ok(pixels) => report(name, &probs.next().expect("one prediction per good input"), Some(pixels)),
            Err(e) => {
                eprintln!("error: {}", kiln::error_line(e));
                all_ok = false;
            }
        }
    }
    if let Some((names, rows)) = &npy {
        let probs = match rows {
            Rows::Pixels(p) => kiln::model::predict(be, &params, p)?,
            Rows::Features(x) => kiln::model::predict(be, &params, x)?,
        };
        for (i, (name, p)) in names.iter().zip(&probs).enumerate() {
            let pixels = match rows {
                Rows::Pixels(px) => Some(&px[i * inputs_n..(i + 1) * inputs_n]),
                Rows::Features(_) => None,
            };
            report(name, p, pixels);
        }
    }
    Ok(all_ok)
}
