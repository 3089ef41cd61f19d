//! `predict`: the digit in each input image (any common format, any size),
//! or in images of an IDX file, with a model written by `train`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use kiln::idx::{self, Kind};
use kiln::preprocess::{self, Invert, SIDE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Predict the digit of any input image with a model trained by `train`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Images to classify (PNG, JPEG, BMP, GIF, PNM, WebP, TIFF, ICO)
    images: Vec<PathBuf>,
    /// The model file written by `train`
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// Print the K most likely digits
    #[arg(long, value_name = "K", default_value_t = 1)]
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
    /// Kernel backend, as for train
    #[arg(long, value_name = "NAME", default_value = "auto")]
    backend: String,
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()))
}

/// The 28x28 input of one image file.
fn input_of(path: &Path, args: &Args) -> Result<[u8; SIDE * SIDE]> {
    let (gray, h, w) = preprocess::load_gray(path)?;
    let invert = match (args.invert, args.no_invert) {
        (true, _) => Invert::Yes,
        (_, true) => Invert::No,
        _ => Invert::Guess,
    };
    if args.no_preprocess {
        if (h, w) != (SIDE, SIDE) {
            bail!("{}: --no-preprocess needs a 28x28 image, this one is {w}x{h}", path.display());
        }
        let light = gray.iter().sum::<f32>() / gray.len() as f32 > 0.5;
        let flip = invert == Invert::Yes || (invert == Invert::Guess && light);
        let mut out = [0u8; SIDE * SIDE];
        for (o, &v) in out.iter_mut().zip(&gray) {
            *o = ((if flip { 1.0 - v } else { v }) * 255.0).round() as u8;
        }
        return Ok(out);
    }
    preprocess::to_mnist(&gray, h, w, invert).with_context(|| path.display().to_string())
}

/// Images `range` of an IDX images file.
fn idx_inputs(path: &Path, range: &str) -> Result<Vec<(String, [u8; SIDE * SIDE])>> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bytes = if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    let header = idx::parse(&bytes, Kind::Images).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // idx::parse no longer insists on 28x28 (the data layer takes any size),
    // but this model does: the same check and message as before.
    if (header.rows, header.cols) != (SIDE, SIDE) {
        bail!(
            "{}: the images are {}x{}; expected {SIDE}x{SIDE} (the network reads {} pixels per image)",
            path.display(),
            header.rows,
            header.cols,
            SIDE * SIDE
        );
    }
    let (start, end) = match range.split_once("..") {
        Some((a, b)) => (a.parse::<usize>()?, b.parse::<usize>()?),
        None => {
            let i = range.parse::<usize>().with_context(|| format!("--index {range}: not an index or I..J"))?;
            (i, i + 1)
        }
    };
    if start >= end || end > header.count {
        bail!("--index {range}: out of range for {} images in {}", header.count, path.display());
    }
    Ok((start..end)
        .map(|i| {
            let mut a = [0u8; SIDE * SIDE];
            a.copy_from_slice(&bytes[header.offset + i * SIDE * SIDE..header.offset + (i + 1) * SIDE * SIDE]);
            (format!("{}[{i}]", path.display()), a)
        })
        .collect())
}

fn run(args: Args) -> Result<bool> {
    if args.top == 0 || args.top > 10 {
        bail!("--top must be between 1 and 10 (got {})", args.top);
    }
    if args.images.is_empty() && args.idx.is_none() {
        bail!("no input: give image files, or --idx FILE --index I");
    }
    if !args.model.exists() {
        bail!(
            "{}: no such model file (hint: run `cargo run --release --bin train` first, or pass --model)",
            args.model.display()
        );
    }
    let (params, _) = checkpoint::load(&args.model)?;
    let be = kiln_kernels::select(&args.backend).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    let mut inputs: Vec<(String, Result<[u8; SIDE * SIDE]>)> =
        args.images.iter().map(|p| (p.display().to_string(), input_of(p, &args))).collect();
    if let Some(path) = &args.idx {
        let range = args.index.as_deref().unwrap_or("0");
        inputs.extend(idx_inputs(path, range)?.into_iter().map(|(n, a)| (n, Ok(a))));
    }
    let good: Vec<u8> = inputs.iter().filter_map(|(_, r)| r.as_ref().ok()).flatten().copied().collect();
    let mut probs = kiln::model::predict(be, &params, &good).into_iter();
    let mut all_ok = true;
    for (name, input) in &inputs {
        let pixels = match input {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                all_ok = false;
                continue;
            }
        };
        let p = probs.next().expect("one prediction per good input");
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        if args.json {
            println!("{}", json!({"file": name, "digit": order[0], "probability": p[order[0]], "probabilities": p}));
        } else {
            let best: Vec<String> = order[..args.top].iter().map(|&d| format!("{d} ({:.1}%)", 100.0 * p[d])).collect();
            println!("{name}: {}", best.join(", "));
        }
        if args.show {
            print!("{}", preprocess::render(pixels, SIDE));
        }
    }
    Ok(all_ok)
}
