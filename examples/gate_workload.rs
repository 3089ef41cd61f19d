//! The fixed workload of the CI epoch-time gate (`ci/gate.sh`): the first
//! `--steps` training steps of epoch 1 on the vendored MNIST (seed 1, batch
//! 128, the tutorial network 512:relu,10:softmax), on one backend and
//! thread count. Prints one JSON line with the wall time of the steps and a
//! checksum of the losses.
//!
//! Under callgrind the gate counts only the instructions of `run_steps`
//! (`--toggle-collect`), so loading the data does not blur the count.
//! `--selftest-slowdown` makes every step redo the forward pass on the
//! first 60% of its rows first (about a quarter more work; the step's own
//! forward then overwrites the activations, so results do not change): the
//! regression the gate's self-test must catch.

use anyhow::{bail, Context, Result};
use kiln::data::{self, Dataset};
use kiln::model::{Arch, Batch, Model, Params};
use kiln::train::{batches_with_next, epoch_order, step, Samples};
use kiln_kernels::RmsProp;
use std::time::Instant;

/// The measured part: `steps` training steps; returns the summed loss.
#[inline(never)]
fn run_steps(model: &mut Model<'_, f32>, data: &Samples<'_>, order: &[u32], steps: usize, slowdown: bool) -> f64 {
    let mut loss = 0.0;
    for (rows, next) in batches_with_next(&order[..order.len().min(steps * 128)], 128) {
        if slowdown {
            let part = &rows[..rows.len() * 3 / 5];
            model.forward(Batch { inputs: data.inputs(), labels: data.labels(), rows: part });
        }
        loss += f64::from(step(model, data, rows, next).expect("finite loss").loss_sum);
    }
    loss
}

fn main() -> Result<()> {
    let (mut steps, mut backend, mut threads, mut slowdown) = (20usize, "avx2".to_string(), 1usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => steps = value()?.parse()?,
            "--backend" => backend = value()?,
            "--threads" => threads = value()?.parse()?,
            "--selftest-slowdown" => slowdown = true,
            _ => bail!("unknown argument {a}; expected --steps N, --backend NAME, --threads N, --selftest-slowdown"),
        }
    }
    let be = kiln_kernels::select(&backend)?;
    let ds = Dataset::load(&data::default_data_dir(), &data::default_cache_dir())?;
    let data = Samples::from(&ds.train);
    let order = epoch_order(ds.train.len(), 1, 0);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let arch = Arch::parse("512:relu,10:softmax", data.width(), 10)?;
    let mut model = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default())?;
    let start = Instant::now();
    let loss = pool.install(|| run_steps(&mut model, &data, &order, steps, slowdown));
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"steps\":{steps},\"backend\":\"{}\",\"threads\":{threads},\"seconds\":{seconds},\"loss_checksum\":{loss}}}",
        be.name()
    );
    Ok(())
}
