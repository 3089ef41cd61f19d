//! `digit`: shows one image of the dataset (of any size) with its label, in
//! the terminal and optionally as a PNG (the tutorial's "plot the digit"
//! step: `cargo run --release --bin digit -- 4` shows `train_images[4]`, a 9).

use anyhow::{bail, Result};
use clap::Parser;
use kiln::data::{self, Dataset};
use std::path::PathBuf;
use std::process::ExitCode;

/// Show image INDEX of the training (or test) set with its label.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Which image (0-based)
    index: usize,
    /// Take it from the test set instead of the training set
    #[arg(long)]
    test: bool,
    /// Directory with the four IDX files [default: the vendored MNIST]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Also write it, enlarged, to this PNG file (the image alone, so that `predict` reads it back)
    #[arg(long, value_name = "PATH")]
    png: Option<PathBuf>,
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()).map(|()| true))
}

fn run(args: Args) -> Result<()> {
    let ds = Dataset::load(&args.data.unwrap_or_else(data::default_data_dir), &data::default_cache_dir())?;
    let (split, name) = if args.test { (&ds.test, "test") } else { (&ds.train, "train") };
    if args.index >= split.len() {
        bail!("index {} is out of range: the {name} set has {} images", args.index, split.len());
    }
    let (pixels, label) = (split.image(args.index), split.labels()[args.index]);
    let (rows, cols) = split.shape();
    kiln::outln!("{name}_images[{}]: label {label} ({rows}x{cols} pixels)", args.index);
    kiln::outln!("{}", kiln::preprocess::render(pixels, cols).trim_end_matches('\n'));
    if let Some(p) = args.png {
        kiln::draw::digit_png(&p, pixels, split.shape())?;
        kiln::outln!("written to {} (the image alone, enlarged; its label is {label})", p.display());
    }
    Ok(())
}
