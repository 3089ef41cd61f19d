//! `serve`: the draw-a-digit page and its JSON API (see `kiln::serve`), for
//! a model written by `train`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kiln::checkpoint::{self, DEFAULT_MODEL_PATH};
use kiln::serve::{self, Config, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Serve a page to draw a digit on, and a JSON API, with a model trained by `train`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The model file written by `train`
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Worker threads for connections and predictions [default: all cores]
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Kernel backend, as for train
    #[arg(long, value_name = "NAME", default_value = "auto")]
    backend: String,
    /// Seconds a client has to send its request headers, and its body
    #[arg(long, value_name = "S", default_value_t = 10, allow_negative_numbers = true)]
    timeout: u64,
    /// Largest image decoded, in pixels (width x height) [default: 4194304, 2048 x 2048]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    max_pixels: Option<u64>,
    /// Connections open at once; more wait in the listen queue
    #[arg(long, value_name = "N", default_value_t = 128, allow_negative_numbers = true)]
    max_connections: usize,
}

fn main() -> ExitCode {
    kiln::exit_code(run(Args::parse()).map(|()| true))
}

fn run(args: Args) -> Result<()> {
    if !args.model.exists() {
        bail!(
            "{}: no such model file (hint: run `cargo run --release --bin train` first, or pass --model)",
            args.model.display()
        );
    }
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second (got 0)");
    }
    let threads = kiln::threads_for(args.threads)?;
    if args.max_connections == 0 || args.max_pixels == Some(0) {
        bail!("--max-connections and --max-pixels must be at least 1");
    }
    let (params, meta) = checkpoint::load(&args.model)?;
    let be = kiln_kernels::select(&args.backend).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    let timeout = Duration::from_secs(args.timeout);
    let mut config = Config {
        header_timeout: timeout,
        body_timeout: timeout,
        workers: threads,
        max_connections: args.max_connections,
        ..Config::default()
    };
    config.max_pixels = args.max_pixels.unwrap_or(config.max_pixels);
    let layers = params.arch().spec();
    let server = Server::new(be, params, meta, config).with_context(|| args.model.display().to_string())?;
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot start the thread pool")?;
    let rt = serve::runtime(threads).context("cannot start the runtime")?;
    rt.block_on(async {
        let (listener, local) = serve::bind(args.addr).await?;
        eprintln!("kiln serve: model {} ({layers}), backend {}, {threads} thread(s)", args.model.display(), be.name());
        kiln::outln!("open http://{local}/ to draw a digit (API: POST /api/predict, GET /api/model, GET /healthz)");
        serve::serve(listener, server).await
    })
}
