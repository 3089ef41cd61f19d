//! Dropout in a whole model: inference passes values through (evaluation,
//! `predict` and a `Predictor` see the network without it), rate 0 is the
//! network without the layer bit for bit, training draws a fresh mask each
//! step that depends on the seed, and a Dropout's zeros reach the next layer.
//! (Gradients: tests/gradient_check.rs; thread counts and backends:
//! tests/backends_train.rs; kill and resume: tests/resume.rs.)

mod common;
use common::{backends_under_test, Golden};
use kiln::model::{Arch, Batch, Inputs, Model, Params, Predictor};
use kiln::train::{evaluate, Samples};
use kiln_kernels::RmsProp;

/// The same weights under two architectures with the same Dense layers.
fn same_weights(from: &Params<f32>, to: &Arch) -> Params<f32> {
    Params::from_vec(to, from.values().to_vec()).unwrap()
}

#[test]
fn inference_ignores_dropout_on_every_backend() {
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let plain = Arch::parse("64:relu,32:tanh", 784, 10).unwrap();
    let dropped = Arch::parse("64:relu,dropout:0.5,32:tanh,dropout:0.3", 784, 10).unwrap();
    let params = Params::<f32>::glorot(&plain, 3);
    let rows: Vec<u32> = (0..100).collect();
    let batch = Batch { inputs: Inputs::Pixels(&images), labels: &labels, rows: &rows };
    for name in backends_under_test() {
        let be = kiln_kernels::select(name).unwrap();
        let mut a = Model::new(be, &params, RmsProp::default()).unwrap();
        let mut b = Model::new(be, &same_weights(&params, &dropped), RmsProp::default()).unwrap().with_seed(9);
        let (sa, sb) = (a.forward(batch), b.forward(batch));
        assert_eq!(sa.loss_sum.to_bits(), sb.loss_sum.to_bits(), "{name}: forward");
        assert_eq!(a.probs(100), b.probs(100), "{name}: probabilities");
        let samples = Samples::new(&images[..100 * 784], &labels[..100], 784).unwrap();
        let (ea, eb) = (evaluate(&mut a, samples).unwrap(), evaluate(&mut b, samples).unwrap());
        assert_eq!((ea.loss.to_bits(), &ea.predicted), (eb.loss.to_bits(), &eb.predicted), "{name}: evaluate");
        let mut pa = Predictor::new(be, &params, 100);
        let mut pb = Predictor::new(be, &same_weights(&params, &dropped), 100);
        assert_eq!(pa.probs(&images, &rows), pb.probs(&images, &rows), "{name}: predictor");
        // Training mode does drop: its loss differs from inference's.
        let trained = b.forward_backward(batch);
        assert_ne!(trained.loss_sum, sb.loss_sum, "{name}: a training forward with dropout 0.5 changed nothing");
    }
}

/// Twenty steps of `layers` from the Glorot weights of seed 7 with
/// Dropout seed `seed`.
fn train(be: &dyn kiln_kernels::Backend<f32>, layers: &str, seed: u64) -> Params<f32> {
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let arch = Arch::parse(layers, 784, 10).unwrap();
    let init = Params::from_vec(&arch, Params::<f32>::glorot(&arch, 7).values().to_vec()).unwrap();
    let mut m = Model::new(be, &init, RmsProp::default()).unwrap().with_seed(seed);
    let rows: Vec<u32> = (0..384).collect();
    for s in 0..20 {
        let r = &rows[(s * 32) % 384..(s * 32) % 384 + 32];
        m.train_step(Batch { inputs: Inputs::Pixels(&images), labels: &labels, rows: r }).unwrap();
    }
    m.params()
}

#[test]
fn rate_zero_is_bit_identical_to_no_layer_and_other_rates_are_not() {
    for name in backends_under_test() {
        let be = kiln_kernels::select(name).unwrap();
        let plain = train(be, "64:relu,48:sigmoid", 1);
        let zero = train(be, "64:relu,dropout:0,48:sigmoid,dropout:0.0", 1);
        assert_eq!(plain.values(), zero.values(), "{name}: dropout:0 changed the weights");
        let dropped = train(be, "64:relu,dropout:0.2,48:sigmoid", 1);
        assert_ne!(plain.values(), dropped.values(), "{name}: dropout:0.2 changed nothing");
        // The seed keys the masks; the same seed gives the same weights.
        assert_eq!(dropped.values(), train(be, "64:relu,dropout:0.2,48:sigmoid", 1).values(), "{name}");
        assert_ne!(dropped.values(), train(be, "64:relu,dropout:0.2,48:sigmoid", 2).values(), "{name}");
    }
}

#[test]
fn the_masked_activations_reach_the_next_layer_and_change_each_step() {
    // With rate 0.9, nine in ten of the first layer's outputs are dropped
    // in training: the gradient of the second kernel (rows: first-layer
    // units, summed over the batch) is zero for every unit dropped in
    // every row, which with 4 rows is about 0.9^4 = 66% of them.
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let arch = Arch::parse("200:sigmoid,dropout:0.9,16:tanh", 784, 10).unwrap();
    let be = kiln_kernels::select("scalar").unwrap();
    let mut m = Model::new(be, &Params::<f32>::glorot(&arch, 1), RmsProp::default()).unwrap();
    let rows = [0u32, 1, 2, 3];
    let batch = Batch { inputs: Inputs::Pixels(&images), labels: &labels, rows: &rows };
    let zero_rows = |m: &mut Model<'_, f32>| -> Vec<bool> {
        m.forward_backward(batch);
        let grads = m.grads();
        grads.kernel(1).chunks_exact(16).map(|r| r.iter().all(|&v| v == 0.0)).collect()
    };
    let first = zero_rows(&mut m);
    let dropped = first.iter().filter(|&&z| z).count();
    // Binomial(200, 0.656): mean 131, sd 6.7.
    assert!((100..=162).contains(&dropped), "{dropped} of 200 units dropped in all 4 rows");
    assert_eq!(first, zero_rows(&mut m), "the same update number draws the same masks");
    m.train_step(batch).unwrap();
    assert_ne!(first, zero_rows(&mut m), "the next update draws new masks");
}
