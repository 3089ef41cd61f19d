//! The training loop: epochs of shuffled batches, Keras's running metrics,
//! and evaluation on a held-out split.

use crate::data::{Split, PIXELS};
use crate::model::{Batch, Model};
use crate::rng::{Rng, Stream};
use anyhow::{bail, ensure, Result};
use kiln_kernels::{RmsProp, XentStats};
use std::time::Instant;

/// Everything that decides what training computes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Passes over the training split.
    pub epochs: usize,
    /// Rows per batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Hidden width `H`.
    pub hidden: usize,
    /// RMSprop hyper-parameters.
    pub opt: RmsProp,
    /// Seed of the initial weights and of every epoch's shuffle.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { epochs: 5, batch_size: 128, hidden: 512, opt: RmsProp::default(), seed: 0 }
    }
}

impl Config {
    /// Rejects settings that cannot train, with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs must be at least 1 (got 0)");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1 (got 0)");
        ensure!(self.batch_size <= u32::MAX as usize, "--batch-size {} is too large", self.batch_size);
        ensure!(self.hidden > 0, "--hidden must be at least 1 (got 0)");
        let RmsProp { lr, rho, eps } = self.opt;
        ensure!(lr.is_finite() && lr > 0.0, "--lr must be a positive number (got {lr})");
        ensure!(rho.is_finite() && (0.0..1.0).contains(&rho), "--rho must be in [0, 1) (got {rho})");
        ensure!(eps.is_finite() && eps > 0.0, "--eps must be a positive number (got {eps})");
        Ok(())
    }
}

/// Keras's per-epoch log line.
#[derive(Clone, Copy, Debug)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean loss over the epoch's images, each batch measured before its update.
    pub loss: f64,
    /// Fraction of the epoch's images classified correctly, likewise.
    pub acc: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// Progress inside an epoch, reported after every step.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps in an epoch.
    pub steps: usize,
    /// Running mean loss of this epoch so far.
    pub loss: f64,
    /// Running accuracy of this epoch so far.
    pub acc: f64,
}

/// Running sums of loss and correct predictions over images.
#[derive(Clone, Copy, Debug, Default)]
struct Running {
    loss: f64,
    correct: usize,
    images: usize,
}

impl Running {
    fn mean_loss(&self) -> f64 {
        self.loss / self.images as f64
    }
    fn acc(&self) -> f64 {
        self.correct as f64 / self.images as f64
    }
}

/// Row indices `0..n` in the seeded order of epoch `epoch` (Fisher-Yates).
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..n as u32).collect();
    Rng::new(seed, Stream::Shuffle(epoch)).shuffle(&mut rows);
    rows
}

/// The batches of `order`, `batch_size` rows each (the last may be short),
/// each with the batch after it (for [`step`]'s prefetch).
pub fn batches_with_next(order: &[u32], batch_size: usize) -> impl Iterator<Item = (&[u32], Option<&[u32]>)> {
    let mut chunks = order.chunks(batch_size).peekable();
    std::iter::from_fn(move || {
        let rows = chunks.next()?;
        Some((rows, chunks.peek().copied()))
    })
}

/// One training step of `model` on `rows` of `data` (see
/// [`Model::train_step`]), with the rows of the step after it, `next`,
/// loading into the caches meanwhile: their first pass would otherwise wait
/// on memory for each random row in turn.
pub fn step(
    model: &mut Model<'_, f32>,
    data: &Split,
    rows: &[u32],
    next: Option<&[u32]>,
) -> Result<XentStats<f32>, XentStats<f32>> {
    if let Some(next) = next {
        kiln_kernels::prefetch_rows(data.pixels(), next, PIXELS);
    }
    model.train_step(Batch { pixels: data.pixels(), labels: data.labels(), rows })
}

/// Trains `model` on `data` for `cfg.epochs` epochs, calling `on_step` after
/// every step and `on_epoch` after every epoch. Stops with an error naming
/// the epoch, step and rows when a batch's loss is not finite; the model's
/// weights are then those before that step.
pub fn fit(
    model: &mut Model<'_, f32>,
    data: &Split,
    cfg: &Config,
    mut on_step: impl FnMut(StepProgress),
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    ensure!(data.len() <= u32::MAX as usize, "the training split has more than 2^32 images");
    let steps = data.len().div_ceil(cfg.batch_size);
    let mut reports = Vec::with_capacity(cfg.epochs);
    for e in 0..cfg.epochs {
        let start = Instant::now();
        let order = epoch_order(data.len(), cfg.seed, e as u32);
        let mut run = Running::default();
        for (s, (rows, next)) in batches_with_next(&order, cfg.batch_size).enumerate() {
            match step(model, data, rows, next) {
                Ok(st) => {
                    run.loss += f64::from(st.loss_sum);
                    run.correct += st.correct;
                    run.images += rows.len();
                }
                Err(st) => bail!(
                    "the loss became {} at epoch {}, step {}/{steps} (batch of {} images, first rows {:?}); \
                     training stopped and no model was written (hint: lower --lr)",
                    st.loss_sum / rows.len() as f32,
                    e + 1,
                    s + 1,
                    rows.len(),
                    &rows[..rows.len().min(4)]
                ),
            }
            on_step(StepProgress { epoch: e + 1, step: s + 1, steps, loss: run.mean_loss(), acc: run.acc() });
        }
        let seconds = start.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: e + 1,
            loss: run.mean_loss(),
            acc: run.acc(),
            seconds,
            images_per_sec: run.images as f64 / seconds,
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// What [`evaluate`] measures on a split.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean clipped cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub acc: f64,
    /// The predicted digit of every image, in order.
    pub predicted: Vec<u8>,
}

impl Evaluation {
    /// `m[true][predicted]` counts.
    pub fn confusion(&self, labels: &[u8]) -> [[usize; 10]; 10] {
        let mut m = [[0usize; 10]; 10];
        for (&t, &p) in labels.iter().zip(&self.predicted) {
            m[usize::from(t)][usize::from(p)] += 1;
        }
        m
    }
}

/// Loss, accuracy and predictions of `model` on all of `data`, in order, in
/// batches of the model's capacity.
pub fn evaluate(model: &mut Model<'_, f32>, data: &Split) -> Evaluation {
    let rows: Vec<u32> = (0..data.len() as u32).collect();
    let mut run = Running::default();
    let mut predicted = Vec::with_capacity(data.len());
    for chunk in rows.chunks(model.batch_capacity()) {
        let st = model.forward(Batch { pixels: data.pixels(), labels: data.labels(), rows: chunk });
        run.loss += f64::from(st.loss_sum);
        run.correct += st.correct;
        run.images += chunk.len();
        predicted.extend(model.probs(chunk.len()).chunks_exact(10).map(|p| kiln_kernels::scalar::argmax(p) as u8));
    }
    Evaluation { loss: run.mean_loss(), acc: run.acc(), predicted }
}

#[cfg(test)]
mod tests {
    use super::batches_with_next;

    #[test]
    fn batches_with_next_pairs_each_batch_with_the_following_one() {
        let order: Vec<u32> = (0..7).collect();
        let got: Vec<_> = batches_with_next(&order, 3).collect();
        let want: Vec<(&[u32], Option<&[u32]>)> =
            vec![(&[0, 1, 2], Some(&[3, 4, 5])), (&[3, 4, 5], Some(&[6])), (&[6], None)];
        assert_eq!(got, want);
        assert_eq!(batches_with_next(&[], 3).count(), 0);
    }
}
