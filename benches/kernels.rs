//! Criterion benchmarks of every kernel on every backend this machine runs,
//! at the training shapes (batch 128, 784 -> 512 -> 10; layer 1's forward also
//! at the epoch's last batch of 96; dW1 also with W1's RMSprop update fused
//! in, as a step runs it), single-threaded so
//! each can be read against one core's FMA peak (measured first, per ISA,
//! and printed; `KILN_BENCH_THREADS=N` runs them on N threads instead); then
//! a hidden layer: mnist_mlp's 512 -> 512 (`KILN_BENCH_HIDDEN=256` for the
//! 784-512-256-10 network's 512 -> 256); a whole
//! training step of both networks at 1 and 2 threads, and a whole epoch of
//! the real job per backend (not scalar: ~5 s an epoch) at 1 and 2 threads.
//!
//! Ids are `op/backend/MxKxN`; throughput is FLOPs (`2 M N K`), so criterion
//! prints GFLOP/s (as "Gelem/s").
//!
//! `cargo bench --bench kernels` (add `--features blas` for the BLAS column).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::model::{self, Arch, Batch, Model, Params};
use kiln::train::Samples;
use kiln_kernels::{
    Activation, Adam, AlignedVec, Backend, Derivative, Dims, Grads, Layer1Path, Optimizer, RmsProp, Rows, Sgd, Update,
    Weights,
};
use std::hint::black_box;

const B: usize = 128;
/// The last batch of an epoch of MNIST's 60000 training images.
const TAIL: usize = 60_000 % B;
const D: usize = 784;
const H: usize = 512;
const C: usize = 10;

struct Inputs {
    x: Vec<u8>,
    labels: Vec<u8>,
    rows: Vec<u32>,
    w1: AlignedVec<f32>,
    b1: AlignedVec<f32>,
    w2: AlignedVec<f32>,
    b2: AlignedVec<f32>,
    h: AlignedVec<f32>,
    dz1: AlignedVec<f32>,
    dz2: AlignedVec<f32>,
}

/// MNIST-like inputs: the real first 384 training digits from the golden
/// file, so the pixel density (and anything that depends on it) is real.
fn inputs() -> Inputs {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keras-rmsprop-h64.safetensors"))
        .expect("golden file");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = st.tensor("images").unwrap().data().to_vec();
    let labels = st.tensor("labels").unwrap().data().to_vec();
    let mut s = 1u32;
    let mut rnd = move || {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (s >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let mut v = |n: usize| (0..n).map(|_| rnd()).collect::<AlignedVec<f32>>();
    Inputs {
        rows: (0..B as u32).map(|i| (i * 37) % 384).collect(),
        w1: v(D * H),
        b1: v(H),
        w2: v(H * C),
        b2: v(C),
        h: v(B * H).iter().map(|v| v.max(0.0)).collect(),
        dz1: v(B * H),
        dz2: v(B * C),
        x,
        labels,
    }
}

fn kernels(c: &mut Criterion) {
    let inp = inputs();
    // The tutorial's optimizer, for the fused products.
    let rmsprop = Optimizer::default().step(1, 1e-3f32);
    let backends = kiln_kernels::available_backends();
    // The ceilings below the peak that the kernels' instruction mixes meet
    // (`Ceilings`): a dense product is read against the tile's, a sparse
    // one against one-load-per-FMA's, an update against sqrt + div.
    println!("FMA peak of one core, measured now, and the kernels' ceilings (data in L1):");
    for name in &backends {
        if let Some(c) = kiln_kernels::select(name).unwrap().ceilings(0.5) {
            let pct = |g: f64| 100.0 * g / c.fma_peak;
            println!(
                "  {name}: peak {:.1} GFLOP/s; {}x{} GEMM tile {:.1} ({:.0}%); one vector load per FMA {:.1} ({:.0}%); \
                 sqrt + div {:.2} ns a vector",
                c.fma_peak,
                c.tile.0,
                c.tile.1,
                c.tile_from_l1,
                pct(c.tile_from_l1),
                c.load_per_fma,
                pct(c.load_per_fma),
                c.sqrt_div_ns
            );
        }
    }
    let flops = |m: usize, k: usize, n: usize| Throughput::Elements((2 * m * k * n) as u64);
    // Kernels run on one thread unless KILN_BENCH_THREADS says otherwise.
    let threads = std::env::var("KILN_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();

    // Layer 1's two products, on real MNIST rows, once per path: `-dense`
    // is the packed GEMM (its GFLOP/s are real FLOPs, comparable with the
    // peak); `-sparse` skips zero pixels, and its "GFLOP/s" count the dense
    // FLOPs it made unnecessary (an effective rate, above the peak).
    let layer1_variants = |name: &'static str| -> Vec<(String, Layer1Path)> {
        if ["scalar", "blas"].contains(&name) {
            vec![(name.to_string(), Layer1Path::Auto)]
        } else {
            vec![(format!("{name}-dense"), Layer1Path::Dense), (format!("{name}-sparse"), Layer1Path::Sparse)]
        }
    };
    let mut g = c.benchmark_group("gemm_bias_relu");
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let layout = be.weight_layout(D, H);
        let mut w = AlignedVec::<f32>::zeroed(layout.len());
        layout.pack(&inp.w1, &mut w);
        let mut out = AlignedVec::<f32>::zeroed(B * H);
        for (id, path) in layer1_variants(name) {
            // The full batch, and the epoch's last one (60000 = 468 x 128 + 96).
            for b in [B, TAIL] {
                g.throughput(flops(b, D, H));
                let (out, rows) = (&mut out[..b * H], &inp.rows[..b]);
                g.bench_function(BenchmarkId::new(id.clone(), format!("{b}x{D}x{H}")), |bch| {
                    pool.install(|| {
                        bch.iter(|| {
                            let d = Dims { k: D, n: H };
                            be.input_forward(
                                out,
                                Rows::new(&inp.x, rows),
                                Weights::new(&w, &inp.b1),
                                Activation::Relu,
                                path,
                                d,
                            )
                        })
                    })
                });
            }
        }
    }
    g.finish();

    let mut g = c.benchmark_group("dw1");
    g.throughput(flops(D, B, H));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let mut dw = AlignedVec::<f32>::zeroed(be.weight_layout(D, H).len());
        let mut db = AlignedVec::<f32>::zeroed(H);
        for (id, path) in layer1_variants(name) {
            g.bench_function(BenchmarkId::new(id, format!("{D}x{B}x{H}")), |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        be.input_backward(
                            Grads::new(&mut dw, &mut db),
                            None,
                            Rows::new(&inp.x, &inp.rows),
                            &inp.dz1,
                            path,
                            Dims { k: D, n: H },
                        )
                    })
                })
            });
        }
    }
    g.finish();

    // dW1 with W1's RMSprop update fused in, as a training step runs it.
    let mut g = c.benchmark_group("dw1_rmsprop");
    g.throughput(flops(D, B, H));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let layout = be.weight_layout(D, H);
        let len = layout.len();
        let mut dw = AlignedVec::<f32>::zeroed(len);
        let mut db = AlignedVec::<f32>::zeroed(H);
        let mut w = AlignedVec::<f32>::zeroed(len);
        layout.pack(&inp.w1, &mut w);
        let mut v = AlignedVec::from_slice(&vec![1e-4f32; len]);
        for (id, path) in layer1_variants(name) {
            g.bench_function(BenchmarkId::new(id, format!("{D}x{B}x{H}")), |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        let d = Dims { k: D, n: H };
                        let update = Some(Update::new(&mut w, [&mut v, &mut [], &mut []], rmsprop));
                        be.input_backward(
                            Grads::new(&mut dw, &mut db),
                            update,
                            Rows::new(&inp.x, &inp.rows),
                            &inp.dz1,
                            path,
                            d,
                        )
                    })
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("softmax_xent");
    g.throughput(flops(B, H, C));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let (mut p, mut dz) = (AlignedVec::<f32>::zeroed(B * C), AlignedVec::<f32>::zeroed(B * C));
        let rows: Vec<u32> = (0..B as u32).collect();
        g.bench_function(BenchmarkId::new(*name, format!("{B}x{H}x{C}")), |bch| {
            pool.install(|| {
                bch.iter(|| {
                    be.output_softmax_xent(
                        &mut p,
                        &mut dz,
                        &inp.h,
                        Weights::new(&inp.w2, &inp.b2),
                        Rows::new(&inp.labels, &rows),
                        Dims { k: H, n: C },
                    )
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("dw2");
    g.throughput(flops(H, B, C));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let (mut dw, mut db) = (AlignedVec::<f32>::zeroed(H * C), AlignedVec::<f32>::zeroed(C));
        g.bench_function(BenchmarkId::new(*name, format!("{H}x{B}x{C}")), |bch| {
            pool.install(|| {
                bch.iter(|| be.output_backward(Grads::new(&mut dw, &mut db), &inp.h, &inp.dz2, Dims { k: H, n: C }))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("dh");
    g.throughput(flops(B, C, H));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let mut dh = AlignedVec::<f32>::zeroed(B * H);
        g.bench_function(BenchmarkId::new(*name, format!("{B}x{C}x{H}")), |bch| {
            pool.install(|| {
                bch.iter(|| {
                    be.output_backward_input(
                        &mut dh,
                        &inp.dz2,
                        &inp.w2,
                        Derivative::new(Activation::Relu, &inp.h),
                        Dims { k: H, n: C },
                    )
                })
            })
        });
    }
    g.finish();

    // A hidden layer, 512 -> h2 units: mnist_mlp's 512 -> 512 (Keras's
    // examples/mnist_mlp.py), or with `KILN_BENCH_HIDDEN=256` the
    // 784-512-256-10 network's 512 -> 256 (which the log's older entries
    // measured). Forward with its ReLU epilogue, the weight gradient
    // (alone, and with RMSprop fused), and the input gradient (dA = dZ W^T
    // * [A > 0]). Its input A is a ReLU's output and dZ went through the
    // ReLU above, with the densities training measures after its first
    // epoch (784-512-256-10, seed 1: A 0.31-0.38 non-zero, dZ 0.53-0.58;
    // mnist_mlp with its Dropout: A 0.30-0.33, dZ 0.52-0.55;
    // `KILN_BENCH_DENSITY=A,DZ` sets others); `-dense` runs the dense GEMMs
    // on them (real FLOPs), `-sparse` skips the zeros (its rate counts the
    // dense FLOPs).
    let h2_var = std::env::var("KILN_BENCH_HIDDEN").ok();
    let h2: usize = match h2_var.as_deref() {
        None => H,
        Some(s) => s.parse().ok().filter(|&n| (1..=H).contains(&n)).expect("KILN_BENCH_HIDDEN: 1..=512 units"),
    };
    let (a_density, dz_density) = std::env::var("KILN_BENCH_DENSITY")
        .ok()
        .and_then(|s| {
            let (a, dz) = s.split_once(',')?;
            Some((a.parse::<f32>().ok()?, dz.parse::<f32>().ok()?))
        })
        .unwrap_or((0.35, 0.55));
    println!("hidden layer {H} -> {h2}: A {a_density} non-zero, dZ {dz_density}");
    let keep = |v: f32, u: f32, density: f32| if u.abs() < density { v } else { 0.0 };
    // Values and masks from independent parts of the random inputs.
    let hidden: AlignedVec<f32> =
        inp.dz1.iter().zip(&inp.w1[..B * H]).map(|(&v, &u)| keep(v.abs(), u * 2.0, a_density)).collect();
    let w_h: AlignedVec<f32> = inp.w1[..H * h2].iter().copied().collect();
    let (values, masks) = (&inp.w1[B * H..B * H + B * h2], &inp.w1[2 * B * H..2 * B * H + B * h2]);
    let dz_h: AlignedVec<f32> = values.iter().zip(masks).map(|(&v, &u)| keep(v, u * 2.0, dz_density)).collect();
    let hidden_variants = |name: &'static str| -> Vec<(String, Layer1Path)> {
        if ["scalar", "blas"].contains(&name) {
            vec![(name.to_string(), Layer1Path::Auto)]
        } else {
            vec![(format!("{name}-dense"), Layer1Path::Dense), (format!("{name}-sparse"), Layer1Path::Sparse)]
        }
    };
    for (group, (m, k, n)) in [
        ("hidden_forward", (B, H, h2)),
        ("hidden_dw", (H, B, h2)),
        ("hidden_dw_rmsprop", (H, B, h2)),
        ("hidden_da", (B, h2, H)),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(flops(m, k, n));
        for name in &backends {
            let be = kiln_kernels::select(name).unwrap();
            let layout = be.weight_layout(H, h2);
            let mut w = AlignedVec::<f32>::zeroed(layout.len());
            layout.pack(&w_h, &mut w);
            let mut v = AlignedVec::from_slice(&vec![1e-4f32; layout.len()]);
            let (mut out, mut dw, mut db) = (
                AlignedVec::<f32>::zeroed(B * H),
                AlignedVec::<f32>::zeroed(layout.len()),
                AlignedVec::<f32>::zeroed(h2),
            );
            let d = Dims { k: H, n: h2 };
            for (id, path) in hidden_variants(name) {
                g.bench_function(BenchmarkId::new(id, format!("{m}x{k}x{n}")), |bch| {
                    pool.install(|| {
                        bch.iter(|| match group {
                            "hidden_forward" => {
                                let h = &mut out[..B * h2];
                                be.hidden_forward(
                                    h,
                                    &hidden,
                                    Weights::new(&w, &inp.b1[..h2]),
                                    Activation::Relu,
                                    path,
                                    d,
                                )
                            }
                            "hidden_dw" => {
                                be.hidden_backward(Grads::new(&mut dw, &mut db), None, &hidden, &dz_h, path, d)
                            }
                            "hidden_dw_rmsprop" => {
                                let update = Some(Update::new(&mut w, [&mut v, &mut [], &mut []], rmsprop));
                                be.hidden_backward(Grads::new(&mut dw, &mut db), update, &hidden, &dz_h, path, d)
                            }
                            _ => be.hidden_backward_input(
                                &mut out,
                                &dz_h,
                                &w,
                                Derivative::new(Activation::Relu, &hidden),
                                path,
                                d,
                            ),
                        })
                    })
                });
            }
        }
        g.finish();
    }

    // The flat update of every parameter of the tutorial network, per rule.
    let n_params = D * H + H + H * C + C;
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(n_params as u64));
    for name in &backends {
        let be = kiln_kernels::select(name).unwrap();
        let opts: [Optimizer; 3] =
            [RmsProp::default().into(), Sgd { momentum: 0.9, ..Sgd::default() }.into(), Adam::default().into()];
        for opt in opts {
            let mut w = AlignedVec::from_slice(&vec![0.1f32; n_params]);
            let grad = AlignedVec::from_slice(&vec![0.01f32; n_params]);
            let mut state = opt.slots().map(|s| AlignedVec::<f32>::zeroed(if s.is_some() { n_params } else { 0 }));
            let step = opt.step(1, opt.lr() as f32);
            g.bench_function(BenchmarkId::new(*name, opt.name()), |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        let [a, b, c] = state.each_mut().map(|s| &mut s[..]);
                        be.update(Update::new(&mut w, [a, b, c], step), &grad)
                    })
                })
            });
        }
    }
    g.finish();

    // A whole training step (forward, backward, update), per thread count.
    let mut g = c.benchmark_group("train_step");
    g.throughput(flops(B, D, H));
    for spec in ["512:relu,10:softmax", "512:relu,256:relu,10:softmax"] {
        let params = Params::glorot(&Arch::parse(spec, D, C).unwrap(), 1);
        let short = if spec.contains("256") { "784-512-256-10" } else { "784-512-10" };
        for name in &backends {
            let be: &dyn Backend<f32> = kiln_kernels::select(name).unwrap();
            for threads in [1, 2] {
                let tp = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut m = Model::new(be, &params, RmsProp::default()).unwrap();
                let batch = Batch { inputs: model::Inputs::Pixels(&inp.x), labels: &inp.labels, rows: &inp.rows };
                g.bench_function(BenchmarkId::new(*name, format!("{short}/t{threads}")), |bch| {
                    tp.install(|| bch.iter(|| black_box(m.train_step(batch).is_ok())))
                });
            }
        }
    }
    g.finish();
}

/// A whole epoch of the real job (469 steps on the vendored MNIST, seed 1),
/// per SIMD/BLAS backend and thread count. Throughput: images.
fn epochs(c: &mut Criterion) {
    let ds = kiln::data::Dataset::load(&kiln::data::default_data_dir(), &kiln::data::default_cache_dir())
        .expect("the vendored MNIST");
    let order = kiln::train::epoch_order(ds.train.len(), 1, 0);
    let mut g = c.benchmark_group("epoch");
    g.sample_size(10).throughput(Throughput::Elements(ds.train.len() as u64));
    for name in kiln_kernels::available_backends().into_iter().filter(|n| *n != "scalar") {
        let be: &dyn Backend<f32> = kiln_kernels::select(name).unwrap();
        for threads in [1, 2] {
            let tp = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let arch = Arch::parse("512:relu,10:softmax", D, C).unwrap();
            let mut m = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
            let train = Samples::from(&ds.train);
            g.bench_function(BenchmarkId::new(name, format!("t{threads}")), |bch| {
                tp.install(|| {
                    bch.iter(|| {
                        for (rows, next) in kiln::train::batches_with_next(&order, B) {
                            black_box(kiln::train::step(&mut m, &train, rows, next).is_ok());
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = kernels, epochs
}
criterion_main!(benches);
