//! kiln as a library, without the CLI and without IDX files: builds a small
//! dataset in memory (8x8 images of a bar in one of four orientations and
//! places, with noise), builds a Keras-style Sequential model, trains it
//! with Adam, validating on the last 10% of the training images with early
//! stopping, evaluates it, predicts one image and saves the model.
//!
//! `cargo run --release --example sequential`

use anyhow::Result;
use kiln::model::{predict, Activation, Model, Params, Sequential};
use kiln::rng::{Rng, Stream};
use kiln::train::{evaluate, fit_with, Config, EarlyStopping, Progress, Samples};
use kiln_kernels::Adam;

const SIDE: usize = 8;

/// `n` images of class `i % 4`: a horizontal, vertical, diagonal or
/// anti-diagonal bar at a random offset, on faint random noise.
fn dataset(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed, Stream::Shuffle(0));
    let (mut pixels, mut labels) = (vec![0u8; n * SIDE * SIDE], Vec::with_capacity(n));
    for (i, img) in pixels.chunks_exact_mut(SIDE * SIDE).enumerate() {
        let class = (i % 4) as u8;
        let at = rng.below(SIDE as u64) as usize;
        for (p, v) in img.iter_mut().enumerate() {
            let (r, c) = (p / SIDE, p % SIDE);
            let on = match class {
                0 => r == at,
                1 => c == at,
                2 => (r + SIDE - c) % SIDE == at,
                _ => (r + c) % SIDE == at,
            };
            *v = if on { 200 + rng.below(56) as u8 } else { rng.below(40) as u8 };
        }
        labels.push(class);
    }
    (pixels, labels)
}

fn main() -> Result<()> {
    let (train_x, train_y) = dataset(2000, 1);
    let (test_x, test_y) = dataset(400, 2);
    // Keras's validation_split=0.1: the last 200 images, never trained on.
    let (train, val) = Samples::new(&train_x, &train_y, SIDE * SIDE)?.validation_split(0.1)?;
    let test = Samples::new(&test_x, &test_y, SIDE * SIDE)?;

    // Sequential([Dense(32, relu), Dense(16, tanh), Dense(4, softmax)])
    let arch = Sequential::new(SIDE * SIDE)
        .dense(32, Activation::Relu)
        .dense(16, Activation::Tanh)
        .dense(4, Activation::Softmax)
        .build()?;
    println!("{}", arch.summary());

    let be = kiln_kernels::select("auto")?;
    let mut model = Model::new(be, &Params::glorot(&arch, 7), Adam::default())?;
    let early_stopping = Some(EarlyStopping { patience: 3, restore_best: true });
    let cfg = Config { epochs: 12, batch_size: 32, seed: 7, early_stopping, ..Config::default() };
    let mut progress = Progress::default();
    fit_with(
        &mut model,
        train,
        Some(val),
        &cfg,
        &mut progress,
        |_, _| {},
        |r, _, _| {
            let (vl, va) = (r.val_loss.unwrap_or(f64::NAN), r.val_acc.unwrap_or(f64::NAN));
            println!(
                "epoch {}: loss {:.4} - accuracy {:.4} - val_loss {vl:.4} - val_accuracy {va:.4}",
                r.epoch, r.loss, r.acc
            );
            Ok(())
        },
    )?;
    if let Some(e) = progress.stopping.stopped_epoch {
        println!("stopped early after epoch {e}; kept epoch {}", progress.stopping.best_epoch);
    }

    let eval = evaluate(&mut model, test)?;
    println!("test: loss {:.4} - accuracy {:.4}", eval.loss, eval.acc);
    anyhow::ensure!(eval.acc > 0.9, "the bars should be easy: test accuracy {}", eval.acc);

    let probs = predict(be, &model.params(), &test_x[..SIDE * SIDE])?;
    println!("image 0 (class {}): probabilities {:.3?}", test_y[0], probs[0]);

    let path = std::env::temp_dir().join("kiln-example-bars.safetensors");
    kiln::checkpoint::save(&path, &model.params(), &Default::default())?;
    let (loaded, _) = kiln::checkpoint::load(&path)?;
    anyhow::ensure!(loaded == model.params(), "the saved model loads back identically");
    println!("saved to {}", path.display());
    Ok(())
}
