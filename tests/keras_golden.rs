//! Reproduces Keras's own first three training steps (tests/data/, produced
//! by Keras 3.15.1 on TensorFlow 2.21 with hidden width 64): the softmax
//! output, the three losses, and every weight tensor after each update, each
//! to a relative error of at most 1e-5 of the tensor's largest magnitude.

mod common;
use common::{backends_under_test, rel_err, Golden};
use kiln::model::{Batch, Model};
use kiln_kernels::RmsProp;

const TOL: f64 = 1e-5;

fn check(what: &str, backend: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    assert!(e <= TOL, "{backend}: {what} differs from Keras: relative error {e:.3e} > {TOL:.0e}");
    eprintln!("{backend}: {what}: relative error {e:.2e}");
}

#[test]
fn reproduces_keras_first_three_steps_on_every_backend() {
    let g = Golden::load();
    let images = g.u8("images");
    let labels = g.u8("labels");
    assert_eq!(images.len(), 384 * 784);
    let (losses, _) = g.f32("loss");
    let (probs0, _) = g.f32("probs.step0");
    let all_rows: Vec<u32> = (0..384).collect();
    for name in backends_under_test() {
        let be = kiln_kernels::select(name).unwrap();
        let mut model = Model::new(be, &g.params(0), RmsProp::default(), 128);
        assert_eq!(model.params.hidden, 64);
        for step in 0..3 {
            let rows = &all_rows[step * 128..(step + 1) * 128];
            let batch = Batch { pixels: &images, labels: &labels, rows };
            if step == 0 {
                model.forward(batch);
                check("probs.step0", name, model.probs(128), &probs0);
            }
            let stats = model.train_step(batch).expect("finite loss");
            let loss = stats.loss_sum / 128.0;
            let e = (f64::from(loss) - f64::from(losses[step])).abs() / f64::from(losses[step]);
            assert!(e <= TOL, "{name}: loss of step {step} is {loss}, Keras {}: relative error {e:.3e}", losses[step]);
            let want = g.params(step + 1);
            let got = model.params.to_row_major();
            let (got_t, want_t) = (got.tensors(), want.tensors());
            for (t, got, want) in [
                ("w1", got_t.w1, want_t.w1),
                ("b1", got_t.b1, want_t.b1),
                ("w2", got_t.w2, want_t.w2),
                ("b2", got_t.b2, want_t.b2),
            ] {
                check(&format!("{t}.step{}", step + 1), name, got, want);
            }
        }
    }
}

/// The comparison above must be able to fail: a learning rate 1% off, or one
/// update skipped, is far outside the tolerance.
#[test]
fn golden_comparison_detects_small_deviations() {
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let rows: Vec<u32> = (0..128).collect();
    let be = kiln_kernels::select("scalar").unwrap();
    let opt = RmsProp { lr: 1.01e-3, ..RmsProp::default() };
    let mut model = Model::new(be, &g.params(0), opt, 128);
    model.train_step(Batch { pixels: &images, labels: &labels, rows: &rows }).unwrap();
    let e = rel_err(model.params.to_row_major().tensors().w1, g.params(1).tensors().w1);
    assert!(e > 10.0 * TOL, "a 1% learning-rate change gave only {e:.2e}");
    let e = rel_err(g.params(0).tensors().w2, g.params(1).tensors().w2);
    assert!(e > 10.0 * TOL, "a skipped update gave only {e:.2e}");
}
