//! `export`: a model file written by `train` as an ONNX graph, for ONNX
//! Runtime, tract and every framework that imports ONNX (see `kiln::onnx`).

use anyhow::{bail, Result};
use clap::Parser;
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use std::path::PathBuf;
use std::process::ExitCode;

/// Export a model trained by `train` to ONNX.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The model file written by `train`
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// Where the ONNX file is written (atomically)
    #[arg(long, value_name = "PATH")]
    onnx: PathBuf,
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()).map(|()| true))
}

fn run(args: Args) -> Result<()> {
    if kiln::fsutil::same_file(&args.model, &args.onnx).unwrap_or(false) {
        bail!("--onnx {} is the model file itself; choose another path", args.onnx.display());
    }
    let (params, meta) = checkpoint::load(&args.model)?;
    // The provenance a deployment may want; paths stay on this machine.
    let keep = ["image_shape", "seed", "epochs", "optimizer", "test_acc", "test_loss"];
    let meta = meta.into_iter().filter(|(k, _)| keep.contains(&k.as_str())).collect();
    kiln::onnx::export(&args.onnx, &params, &meta)?;
    let arch = params.arch();
    kiln::outln!(
        "{}: ONNX opset {} graph of {} ({} inputs -> {} classes, {} parameters) written from {}",
        args.onnx.display(),
        kiln::onnx::OPSET,
        arch.spec(),
        arch.inputs(),
        arch.classes(),
        arch.parameters(),
        args.model.display()
    );
    Ok(())
}
