//! Whole training steps on every backend, for the tutorial network and for
//! deeper stacks with every activation: twenty steps on real MNIST digits
//! match the scalar reference, the same seed gives bit-identical weights
//! under 1, 2 and 3 threads (with Dropout too), and the fused updates equal
//! gradient-then-update.

mod common;
use common::{backends_under_test, rel_err, Golden};
use kiln::model::{Arch, Batch, Inputs, Model, Params};
use kiln_kernels::{Adam, Backend, Optimizer, RmsProp, Sgd};

const STEPS: usize = 20;
const BATCH: usize = 32;

/// Row-major parameters after `STEPS` steps of `BATCH` rows (cycling over the
/// golden file's 384 images) from the Glorot weights of seed 7.
fn train(be: &dyn Backend<f32>, layers: &str) -> Params<f32> {
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let rows: Vec<u32> = (0..384).collect();
    let arch = Arch::parse(layers, 784, 10).unwrap();
    let mut m = Model::new(be, &Params::glorot(&arch, 7), RmsProp::default()).unwrap();
    for s in 0..STEPS {
        let r = &rows[(s * BATCH) % 384..(s * BATCH) % 384 + BATCH];
        m.train_step(Batch { inputs: Inputs::Pixels(&images), labels: &labels, rows: r }).expect("finite loss");
    }
    m.params()
}

#[test]
fn twenty_steps_match_the_scalar_backend() {
    for layers in
        ["100:relu", "64:relu,48:tanh,40:sigmoid,33:linear", "10:softmax", "64:relu,dropout:0.2,48:tanh,dropout:0.5"]
    {
        let reference = train(kiln_kernels::select("scalar").unwrap(), layers);
        for name in backends_under_test() {
            let be = kiln_kernels::select(name).unwrap();
            let got = train(be, layers);
            for l in 0..got.arch().dense().len() {
                for (t, x, y) in
                    [("kernel", got.kernel(l), reference.kernel(l)), ("bias", got.bias(l), reference.bias(l))]
                {
                    let e = rel_err(x, y);
                    eprintln!("{name} {layers}: dense_{}.{t} after {STEPS} steps: relative error {e:.2e}", l + 1);
                    assert!(e <= TOL, "{name} {layers}: dense_{}.{t} differs from scalar by {e:.2e}", l + 1);
                }
            }
        }
    }
}

/// Rounding differences between backends (FMA, summation order) are about
/// 1e-7 of a tensor after one step; RMSprop divides each gradient by its own
/// running RMS, which amplifies differences in gradients near zero, and
/// twenty steps compound them. The bound is the golden test's (see README,
/// "Keras exactness", for the errors measured).
const TOL: f64 = 5e-6;

/// Index of the first differing bit pattern, if any.
fn first_difference(a: &Params<f32>, b: &Params<f32>) -> Option<usize> {
    a.values().iter().zip(b.values()).position(|(x, y)| x.to_bits() != y.to_bits())
}

/// kiln's own backends split work so that no reduction depends on the
/// thread count. OpenBLAS (the `blas` backend) splits its products its own
/// way and is not covered: see README, "Threads".
#[test]
fn weights_are_bit_identical_for_any_thread_count() {
    for name in backends_under_test().into_iter().filter(|n| *n != "blas") {
        let be = kiln_kernels::select(name).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                // At 2 threads (on 2 cores or more) the hidden layers'
                // backward runs in pairs of ops (`kiln_kernels::side_by_side`).
                let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
                assert_eq!(kiln_kernels::runs_side_by_side(), threads == 2 && cores >= 2);
                let dropout = "130:relu,dropout:0.3,70:sigmoid,dropout:0.1,dropout:0.2,40:tanh";
                (train(be, "130:relu"), train(be, "130:relu,70:sigmoid,40:tanh"), train(be, dropout))
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            for (a, b) in [(&one.0, &other.0), (&one.1, &other.1), (&one.2, &other.2)] {
                if let Some(i) = first_difference(a, b) {
                    panic!(
                        "{name} {}: {threads} threads differ from 1 thread, first at parameter {i}",
                        a.arch().spec()
                    );
                }
            }
        }
    }
}

/// `train_step` (which fuses layer 1's update into its gradient product on
/// the SIMD backends) gives the same weights, bit for bit, as computing all
/// gradients first and updating afterwards; also for a batch larger than one
/// k-block (300 > 256) and a hidden width that is not a whole panel; for
/// every optimizer; on a pool of two threads, where networks with hidden
/// layers run their backward in pairs of ops (with and without an update).
#[test]
fn fused_update_is_bit_identical_to_gradient_then_update() {
    let g = Golden::load();
    let (images, labels) = (g.u8("images"), g.u8("labels"));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for name in backends_under_test() {
            let be = kiln_kernels::select(name).unwrap();
            for (layers, batch) in [
                ("100:relu", 32),
                ("37:relu", 300),
                ("100:relu,37:tanh", 32),
                ("37:sigmoid,33:relu", 300),
                ("100:relu,dropout:0.3,37:tanh,dropout:0.2", 32),
                ("10:softmax", 32),
            ] {
                let rows: Vec<u32> = (0..batch as u32).map(|i| (i * 7) % 384).collect();
                let b = Batch { inputs: Inputs::Pixels(&images), labels: &labels, rows: &rows };
                let params = Params::glorot(&Arch::parse(layers, 784, 10).unwrap(), 3);
                for opt in optimizers() {
                    let mut fused = Model::new(be, &params, opt).unwrap();
                    let mut split = Model::new(be, &params, opt).unwrap();
                    for _ in 0..3 {
                        fused.train_step(b).unwrap();
                        split.forward_backward(b);
                        split.update();
                    }
                    let what = format!("{name}: {}, {layers}, batch {batch}", opt.describe());
                    assert_eq!(first_difference(&fused.params(), &split.params()), None, "{what}");
                    assert_eq!((fused.iterations(), split.iterations()), (3, 3), "{what}");
                    for ((n1, s1), (n2, s2)) in fused.optimizer_state().iter().zip(&split.optimizer_state()) {
                        assert_eq!(n1, n2);
                        assert_eq!(first_difference(s1, s2), None, "{what}: state {n1}");
                    }
                }
            }
        }
    });
}

/// Each kind of update rule (the kernels' own tests cover every variant).
fn optimizers() -> [Optimizer; 4] {
    [
        RmsProp { momentum: 0.5, centered: true, ..RmsProp::default() }.into(),
        RmsProp::default().into(),
        Sgd { momentum: 0.9, nesterov: true, ..Sgd::default() }.into(),
        Adam::adamw().into(),
    ]
}

/// Subnormals are flushed to zero, as TensorFlow flushes them: the state of
/// pixels lit in the first batch only decays by half a step (rho, beta_1 or
/// momentum 0.5) through the whole float range, and at no step of 200 does
/// any optimizer state hold a subnormal value; the decaying state does get
/// within a few halvings of the subnormal range (so without flushing the
/// next steps would be subnormal) and ends at 0 or at the bottom of the
/// normal range. Every backend, both input-layer paths, 1 and 2 threads.
#[test]
fn no_optimizer_state_ever_holds_a_subnormal() {
    use kiln_kernels::Layer1Path;
    let (n, d) = (64usize, 784usize);
    let mut pixels = vec![0u8; n * d];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (i, img) in pixels.chunks_exact_mut(d).enumerate() {
        for (p, v) in img.iter_mut().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Pixels 0..100 are lit in images 0..16 only (the first batch).
            let lit = if p < 100 { i < 16 } else { seed.is_multiple_of(7) };
            *v = if lit { 60 + (seed >> 20) as u8 % 190 } else { 0 };
        }
    }
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let rows: Vec<u32> = (0..n as u32).collect();
    let arch = Arch::parse("24:relu", d, 10).unwrap();
    let opts: [Optimizer; 3] = [
        RmsProp { rho: 0.5, ..RmsProp::default() }.into(),
        Adam { beta_1: 0.5, ..Adam::default() }.into(),
        Sgd { momentum: 0.5, ..Sgd::default() }.into(),
    ];
    for name in backends_under_test() {
        let be = kiln_kernels::select(name).unwrap();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for path in [Layer1Path::Dense, Layer1Path::Sparse] {
                for opt in opts {
                    let what = format!("{name}, {threads} threads, {path:?}, {}", opt.describe());
                    let mut m = Model::new(be, &Params::glorot(&arch, 3), opt).unwrap().with_layer1_path(path);
                    let mut smallest = f32::INFINITY;
                    for s in 0..200 {
                        let r = if s == 0 { &rows[..16] } else { &rows[16 + (s % 3) * 16..32 + (s % 3) * 16] };
                        pool.install(|| {
                            m.train_step(Batch { inputs: Inputs::Pixels(&pixels), labels: &labels, rows: r }).unwrap()
                        });
                        for (slot, st) in m.optimizer_state() {
                            if let Some(v) = st.values().iter().find(|v| v.is_subnormal()) {
                                panic!("{what}: step {s}: {slot} holds the subnormal {v:e}");
                            }
                            // The first kernel's rows 0..100: the decaying pixels.
                            let decaying = &st.kernel(0)[..100 * 24];
                            let tiny =
                                decaying.iter().map(|v| v.abs()).filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
                            if slot == "momentum" || opt.name() == "rmsprop" {
                                smallest = smallest.min(tiny);
                            }
                        }
                    }
                    assert!(
                        smallest < 1e-36,
                        "{what}: the decaying state never came near the subnormal range ({smallest:e})"
                    );
                    let end = m.optimizer_state();
                    let (_, st) = end.iter().find(|(s, _)| *s == "momentum" || opt.name() == "rmsprop").unwrap();
                    let left = st.kernel(0)[..100 * 24].iter().fold(0f32, |m, v| m.max(v.abs()));
                    // Zero, or stuck a few units above the normal minimum
                    // (Adam's `m + (0 - m) / 2` once `m / 2` flushes to 0).
                    assert!(left < 1e-37, "{what}: the state did not decay ({left:e})");
                }
            }
        }
    }
}
