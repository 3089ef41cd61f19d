//! Every SIMD (and BLAS) backend this machine runs, against the scalar
//! reference, op by op: random shapes covering 0, 1, odd sizes, MR +- 1,
//! NR +- 1, KC +- 1 and the training shapes; outputs pre-filled with NaN
//! (beta = 0 must never read them); a tolerance derived from the f32 error
//! bound of a length-K dot product, `2 (K + 2) 2^-24 sum |a b|` (each side
//! is within half of it of the exact value); identical bytes under 1, 2 and
//! 3 threads.
//!
//! `KILN_TEST_BACKEND=NAME` restricts the run to one backend and fails if
//! this machine cannot run it, so CI can force each instruction set and
//! notice when one silently did not run.

mod common;
use common::{optimizers, state_for, update_bits, update_of, Gen};
use kiln_kernels::{
    runs_side_by_side, scalar::Scalar, with_placement, Activation, Applied, Backend, Derivative, Dims, Grads,
    InputGrad, Layer1Path, PanelLayout, Placement, Rows, Weights,
};

const AUTO: Layer1Path = Layer1Path::Auto;
const RELU: Activation = Activation::Relu;

const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Every activation a Dense layer below the output applies (all but
/// softmax, which is fused with the loss): the tests iterate over these, so
/// a new activation is tested on every backend against the reference.
fn layer_activations() -> impl Iterator<Item = Activation> {
    Activation::ALL.into_iter().filter(|a| a.applied() != Applied::WithLoss)
}

fn backends_under_test() -> Vec<(&'static str, &'static dyn Backend<f32>)> {
    let names: Vec<&'static str> = match std::env::var("KILN_TEST_BACKEND") {
        Ok(forced) if !forced.is_empty() => {
            let name = kiln_kernels::BACKEND_NAMES
                .iter()
                .copied()
                .find(|n| *n == forced)
                .unwrap_or_else(|| panic!("KILN_TEST_BACKEND={forced} is not a backend name"));
            vec![name]
        }
        _ => kiln_kernels::available_backends().into_iter().filter(|n| *n != "scalar").collect(),
    };
    names
        .into_iter()
        .map(|n| (n, kiln_kernels::select(n).unwrap_or_else(|e| panic!("forced backend did not run: {e}"))))
        .collect()
}

/// Asserts `|got - want| <= 2 (k + 2) U mag + tiny` elementwise.
fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f64], k: usize) {
    assert_within(what, got, want, mag, k, 0.0);
}

/// [`assert_close`] plus `ulps` units of `U` times `|want|` (the rounding
/// of an activation applied to the result, on each side).
fn assert_within(what: &str, got: &[f32], want: &[f32], mag: &[f64], k: usize, ulps: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = 2.0 * (k as f64 + 2.0) * U * m + ulps * U * f64::from(w).abs() + 1e-30;
        let diff = (f64::from(g) - f64::from(w)).abs();
        assert!(diff <= bound, "{what}[{i}]: got {g}, reference {w}, |diff| {diff:e} > bound {bound:e}");
    }
}

/// (B, K, N) triples: degenerate, tiny, around every tile edge (MR 6/8/12,
/// NR 12/16/32, KC 256) and the training shapes.
const SHAPES: &[(usize, usize, usize)] = &[
    (0, 5, 7),
    (1, 1, 1),
    (3, 0, 5),
    (40, 0, 7),
    (2, 3, 0),
    (5, 7, 11),
    (6, 16, 16),
    (7, 17, 15),
    (11, 255, 17),
    (12, 256, 31),
    (13, 257, 32),
    (9, 63, 33),
    (25, 511, 12),
    (96, 784, 512),
    (128, 784, 512),
    (128, 512, 10),
];

fn pixel(x: &[u8], rows: &[u32], k: usize, i: usize, kk: usize) -> f64 {
    f64::from(f32::from(x[rows[i] as usize * k + kk]) / 255.0)
}

#[test]
fn layer1_forward_and_weight_gradient_match_scalar() {
    let mut g = Gen(11);
    for ((name, be), path) in
        backends_under_test().into_iter().flat_map(|b| [Layer1Path::Dense, Layer1Path::Sparse].map(move |p| (b, p)))
    {
        let name = format!("{name} {path:?}");
        for &(b, k, n) in SHAPES {
            let r = b + 3;
            let x = g.pixels(r * k);
            let rows: Vec<u32> = (0..b).map(|_| (g.next() % r as u64) as u32).collect();
            let (w, bias, dz) = (g.vec(k * n), g.vec(n), g.vec(b * n));
            let d = Dims { k, n };
            let layout = be.weight_layout(k, n);
            let mut wp = vec![f32::NAN; layout.len()];
            layout.pack(&w, &mut wp);

            let mut want = vec![f32::NAN; b * n];
            Scalar.input_forward(&mut want, Rows::new(&x, &rows), Weights::new(&w, &bias), RELU, AUTO, d);
            let mut got = vec![f32::NAN; b * n];
            be.input_forward(&mut got, Rows::new(&x, &rows), Weights::new(&wp, &bias), RELU, path, d);
            let mag: Vec<f64> = (0..b * n)
                .map(|e| {
                    let (i, j) = (e / n.max(1), e % n.max(1));
                    (0..k).map(|kk| (pixel(&x, &rows, k, i, kk) * f64::from(w[kk * n + j])).abs()).sum::<f64>()
                        + f64::from(bias[j]).abs()
                })
                .collect();
            assert_close(&format!("{name} forward {b}x{k}x{n}"), &got, &want, &mag, k);

            let (mut dw_want, mut db_want) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
            Scalar.input_backward(Grads::new(&mut dw_want, &mut db_want), None, Rows::new(&x, &rows), &dz, AUTO, d);
            let (mut dwp, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
            be.input_backward(Grads::new(&mut dwp, &mut db), None, Rows::new(&x, &rows), &dz, path, d);
            let mut dw = vec![f32::NAN; k * n];
            layout.unpack(&dwp, &mut dw);
            let padding: Vec<f32> = (0..layout.len())
                .filter(|&i| i % layout.nr + (i / (layout.k * layout.nr)) * layout.nr >= n)
                .map(|i| dwp[i])
                .collect();
            assert!(padding.iter().all(|&v| v == 0.0), "{name}: dW padding not zero: {padding:?}");
            let mag: Vec<f64> = (0..k * n)
                .map(|e| {
                    let (kk, j) = (e / n.max(1), e % n.max(1));
                    (0..b).map(|i| (pixel(&x, &rows, k, i, kk) * f64::from(dz[i * n + j])).abs()).sum()
                })
                .collect();
            assert_close(&format!("{name} dW1 {b}x{k}x{n}"), &dw, &dw_want, &mag, b);
            let dbmag: Vec<f64> = (0..n).map(|j| (0..b).map(|i| f64::from(dz[i * n + j]).abs()).sum()).collect();
            assert_close(&format!("{name} db1 {b}x{n}"), &db, &db_want, &dbmag, b);
        }
    }
}

/// The sparse layer 1 skips only `fma(0, w, acc)` links of the dense FMA
/// chains, so both paths give identical bits: forward, dW1, and dW1 fused
/// with RMSprop, at densities from empty to full.
#[test]
fn sparse_and_dense_layer1_are_bit_identical() {
    let mut g = Gen(16);
    for (name, be) in backends_under_test() {
        // N = 200: 7 AVX-512 panels (13 AVX2 ones), so that the tasks' panel
        // groups end in groups of 3 and 2 at 2 threads.
        for &(b, k, n) in &[(1, 1, 1), (7, 17, 15), (13, 257, 33), (128, 784, 512), (300, 784, 37), (64, 784, 200)] {
            for density in [0.0, 0.05, 0.2, 0.6, 1.0] {
                let r = b + 2;
                let x: Vec<u8> = (0..r * k)
                    .map(|_| if (g.next() % 1000) as f64 / 1000.0 < density { (g.next() % 255 + 1) as u8 } else { 0 })
                    .collect();
                let rows: Vec<u32> = (0..b).map(|_| (g.next() % r as u64) as u32).collect();
                let (w, bias, dz) = (g.vec(k * n), g.vec(n), g.vec(b * n));
                let d = Dims { k, n };
                let layout = be.weight_layout(k, n);
                let mut wp = vec![0f32; layout.len()];
                layout.pack(&w, &mut wp);
                // Every update rule (see `optimizers`), from state with zeros.
                let states: Vec<_> = optimizers().iter().map(|o| (*o, state_for(o, layout.len(), &mut g))).collect();
                let run = |path| {
                    let mut h = vec![f32::NAN; b * n];
                    be.input_forward(&mut h, Rows::new(&x, &rows), Weights::new(&wp, &bias), RELU, path, d);
                    // The other epilogues (bias only, then tanh) too.
                    let mut h_tanh = vec![f32::NAN; b * n];
                    be.input_forward(
                        &mut h_tanh,
                        Rows::new(&x, &rows),
                        Weights::new(&wp, &bias),
                        Activation::Tanh,
                        path,
                        d,
                    );
                    h.extend(h_tanh);
                    let (mut dw, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
                    be.input_backward(Grads::new(&mut dw, &mut db), None, Rows::new(&x, &rows), &dz, path, d);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    let mut fused = Vec::new();
                    for (opt, state) in &states {
                        let (mut w, mut state, mut scratch, mut db1) =
                            (wp.clone(), state.clone(), vec![0f32; layout.len()], vec![0f32; n]);
                        let update = Some(update_of(opt, 2, &mut w, &mut state));
                        be.input_backward(
                            Grads::new(&mut scratch, &mut db1),
                            update,
                            Rows::new(&x, &rows),
                            &dz,
                            path,
                            d,
                        );
                        fused.push((opt.describe(), update_bits(&w, &state)));
                    }
                    (bits(&h), bits(&dw), bits(&db), fused)
                };
                let dense = run(Layer1Path::Dense);
                let sparse = run(Layer1Path::Sparse);
                assert!(dense.0 == sparse.0, "{name} {b}x{k}x{n} density {density}: forward differs");
                assert!(dense.1 == sparse.1, "{name} {b}x{k}x{n} density {density}: dW1 differs");
                assert!(dense.2 == sparse.2, "{name} {b}x{k}x{n} density {density}: db1 differs");
                for (d3, s3) in dense.3.iter().zip(&sparse.3) {
                    assert!(d3 == s3, "{name} {b}x{k}x{n} density {density}: fused {} differs", d3.0);
                }
            }
        }
    }
}

/// The hidden layers' sparse paths skip only `fma(0, w, acc)` links of the
/// dense FMA chains too: the forward (zeros of `A`), the weight gradient
/// and each fused update (zeros of `A`) and the input gradient (zeros of
/// `dZ`) give the dense path's bits, at densities from empty to full, with
/// `-0.0` among the zeros.
#[test]
fn sparse_and_dense_hidden_layers_are_bit_identical() {
    let mut g = Gen(23);
    for (name, be) in backends_under_test() {
        for &(b, k, n) in &[(1, 1, 1), (7, 17, 15), (13, 257, 33), (9, 63, 64), (128, 512, 256), (20, 100, 200)] {
            for density in [0.0, 0.1, 0.35, 0.7, 1.0] {
                let mut sparse_vec = |len: usize| -> Vec<f32> {
                    (0..len)
                        .map(|_| {
                            let keep = (g.next() % 1000) as f64 / 1000.0 < density;
                            let v = g.f32();
                            if keep {
                                v
                            } else if v < 0.0 {
                                -0.0
                            } else {
                                0.0
                            }
                        })
                        .collect()
                };
                let (a, dz) = (sparse_vec(b * k), sparse_vec(b * n));
                let (w, bias) = (g.vec(k * n), g.vec(n));
                let d = Dims { k, n };
                let layout = be.weight_layout(k, n);
                let mut wp = vec![0f32; layout.len()];
                layout.pack(&w, &mut wp);
                let states: Vec<_> = optimizers().iter().map(|o| (*o, state_for(o, layout.len(), &mut g))).collect();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let run = |path| {
                    let mut h = Vec::new();
                    for act in layer_activations() {
                        let mut out = vec![f32::NAN; b * n];
                        be.hidden_forward(&mut out, &a, Weights::new(&wp, &bias), act, path, d);
                        h.extend(bits(&out));
                    }
                    let (mut dw, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
                    be.hidden_backward(Grads::new(&mut dw, &mut db), None, &a, &dz, path, d);
                    let mut da = vec![f32::NAN; b * k];
                    be.hidden_backward_input(&mut da, &dz, &wp, Derivative::new(Activation::Relu, &a), path, d);
                    let mut fused = Vec::new();
                    for (opt, state) in &states {
                        let (mut w, mut state, mut scratch, mut db1) =
                            (wp.clone(), state.clone(), vec![0f32; layout.len()], vec![0f32; n]);
                        let update = Some(update_of(opt, 2, &mut w, &mut state));
                        be.hidden_backward(Grads::new(&mut scratch, &mut db1), update, &a, &dz, path, d);
                        fused.push((opt.describe(), update_bits(&w, &state)));
                    }
                    (h, bits(&dw), bits(&db), bits(&da), fused)
                };
                let (dense, sparse) = (run(Layer1Path::Dense), run(Layer1Path::Sparse));
                let what = format!("{name} hidden {b}x{k}x{n} density {density}");
                assert!(dense.0 == sparse.0, "{what}: forward differs");
                assert!(dense.1 == sparse.1, "{what}: dW differs");
                assert!(dense.2 == sparse.2, "{what}: db differs");
                assert!(dense.3 == sparse.3, "{what}: dA differs");
                for (d3, s3) in dense.4.iter().zip(&sparse.4) {
                    assert!(d3 == s3, "{what}: fused {} differs", d3.0);
                }
            }
        }
    }
}

#[test]
fn layer2_ops_match_scalar() {
    let mut g = Gen(12);
    for (name, be) in backends_under_test() {
        for &(b, k, n) in SHAPES {
            let n = if n == 0 { 0 } else { n.min(10) };
            let d = Dims { k, n };
            let labels: Vec<u8> = (0..b + 1).map(|_| (g.next() % n.max(1) as u64) as u8).collect();
            let rows: Vec<u32> = (0..b).map(|i| i as u32).collect();
            let h: Vec<f32> = g.vec(b * k).iter().map(|v| v.max(0.0)).collect();
            let (w, bias, dz) = (g.vec(k * n), g.vec(n), g.vec(b * n));

            if n > 0 {
                let (mut p0, mut dz0) = (vec![f32::NAN; b * n], vec![f32::NAN; b * n]);
                let s0 = Scalar.output_softmax_xent(
                    &mut p0,
                    &mut dz0,
                    &h,
                    Weights::new(&w, &bias),
                    Rows::new(&labels, &rows),
                    d,
                );
                let (mut p1, mut dz1) = (vec![f32::NAN; b * n], vec![f32::NAN; b * n]);
                let s1 = be.output_softmax_xent(
                    &mut p1,
                    &mut dz1,
                    &h,
                    Weights::new(&w, &bias),
                    Rows::new(&labels, &rows),
                    d,
                );
                for i in 0..b {
                    // A probability moves by at most twice the largest logit
                    // error; each logit is a length-k dot product plus bias.
                    let lerr = (0..n)
                        .map(|j| {
                            let m: f64 =
                                (0..k).map(|kk| (f64::from(h[i * k + kk]) * f64::from(w[kk * n + j])).abs()).sum();
                            2.0 * (k as f64 + 2.0) * U * (m + f64::from(bias[j]).abs())
                        })
                        .fold(0f64, f64::max);
                    for j in 0..n {
                        let e = i * n + j;
                        let tol = 2.0 * lerr + 32.0 * U;
                        assert!((f64::from(p1[e]) - f64::from(p0[e])).abs() <= tol, "{name} p {b}x{k}x{n} [{i},{j}]");
                        assert!(
                            (f64::from(dz1[e]) - f64::from(dz0[e])).abs() <= tol / b as f64,
                            "{name} dz {b}x{k}x{n} [{i},{j}]"
                        );
                    }
                }
                let lt = f64::from(s0.loss_sum).abs() * 1e-4 + 1e-4;
                assert!((f64::from(s1.loss_sum) - f64::from(s0.loss_sum)).abs() <= lt, "{name} loss {b}x{k}x{n}");
                assert_eq!(s1.correct, s0.correct, "{name} correct {b}x{k}x{n}");
            }

            let (mut dw0, mut db0) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
            Scalar.output_backward(Grads::new(&mut dw0, &mut db0), &h, &dz, d);
            let (mut dw1, mut db1) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
            be.output_backward(Grads::new(&mut dw1, &mut db1), &h, &dz, d);
            let mag: Vec<f64> = (0..k * n)
                .map(|e| (0..b).map(|i| (f64::from(h[i * k + e / n]) * f64::from(dz[i * n + e % n])).abs()).sum())
                .collect();
            assert_close(&format!("{name} dW2 {b}x{k}x{n}"), &dw1, &dw0, &mag, b);
            let dbmag: Vec<f64> = (0..n).map(|j| (0..b).map(|i| f64::from(dz[i * n + j]).abs()).sum()).collect();
            assert_close(&format!("{name} db2 {b}x{n}"), &db1, &db0, &dbmag, b);

            let mut dh0 = vec![f32::NAN; b * k];
            Scalar.output_backward_input(&mut dh0, &dz, &w, Derivative::new(RELU, &h), d);
            let mut dh1 = vec![f32::NAN; b * k];
            be.output_backward_input(&mut dh1, &dz, &w, Derivative::new(RELU, &h), d);
            let mag: Vec<f64> = (0..b * k)
                .map(|e| {
                    let (i, kk) = (e / k, e % k);
                    (0..n).map(|j| (f64::from(dz[i * n + j]) * f64::from(w[kk * n + j])).abs()).sum()
                })
                .collect();
            assert_close(&format!("{name} dH {b}x{k}x{n}"), &dh1, &dh0, &mag, n);
        }
    }
}

#[test]
fn small_integer_inputs_are_exact() {
    // Pixels 0/255 and small integer weights: every product and partial sum
    // is an exact f32, so every backend must agree bit for bit.
    let (b, k, n) = (13, 37, 35);
    let x: Vec<u8> = (0..b * k).map(|i| if i % 3 == 0 { 255 } else { 0 }).collect();
    let rows: Vec<u32> = (0..b as u32).rev().collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
    let bias: Vec<f32> = (0..n).map(|j| (j % 5) as f32 - 2.0).collect();
    let dz: Vec<f32> = (0..b * n).map(|i| (i % 5) as f32 - 2.0).collect();
    let d = Dims { k, n };
    let mut want = vec![0f32; b * n];
    Scalar.input_forward(&mut want, Rows::new(&x, &rows), Weights::new(&w, &bias), RELU, AUTO, d);
    let (mut dw_want, mut db_want) = (vec![0f32; k * n], vec![0f32; n]);
    Scalar.input_backward(Grads::new(&mut dw_want, &mut db_want), None, Rows::new(&x, &rows), &dz, AUTO, d);
    for (name, be) in backends_under_test() {
        let layout = be.weight_layout(k, n);
        let mut wp = vec![0f32; layout.len()];
        layout.pack(&w, &mut wp);
        let mut got = vec![f32::NAN; b * n];
        be.input_forward(&mut got, Rows::new(&x, &rows), Weights::new(&wp, &bias), RELU, AUTO, d);
        assert_eq!(got, want, "{name}");
        let (mut dwp, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
        be.input_backward(Grads::new(&mut dwp, &mut db), None, Rows::new(&x, &rows), &dz, AUTO, d);
        let mut dw = vec![0f32; k * n];
        layout.unpack(&dwp, &mut dw);
        assert_eq!((dw, db), (dw_want.clone(), db_want.clone()), "{name}");
    }
}

#[test]
fn every_update_rule_is_bit_identical_to_scalar() {
    let mut g = Gen(13);
    for (name, be) in backends_under_test() {
        for opt in optimizers() {
            for len in [0usize, 1, 7, 17, 100_003] {
                let (gr, w0, s0) = (g.vec(len), g.vec(len), state_for(&opt, len, &mut g));
                let (mut w1, mut s1) = (w0.clone(), s0.clone());
                Scalar.update(update_of(&opt, 3, &mut w1, &mut s1), &gr);
                let (mut w2, mut s2) = (w0.clone(), s0.clone());
                be.update(update_of(&opt, 3, &mut w2, &mut s2), &gr);
                assert!(update_bits(&w1, &s1) == update_bits(&w2, &s2), "{name} {} len {len}", opt.describe());
            }
        }
    }
}

/// kiln's own backends only; OpenBLAS splits its products its own way.
/// The input layer's weight gradient from lists made ahead
/// (`overlap_input_lists`, while `work` runs parallel regions of its own)
/// gives the bits of `input_backward`, with and without a fused update, at
/// 1, 2 and 3 threads, on every path and density, with the cores near or
/// far apart ([`Placement`]), and `work` runs once.
#[test]
fn lists_made_ahead_give_the_same_weight_gradient() {
    let mut g = Gen(19);
    let mut backends = backends_under_test();
    backends.push(("scalar", &Scalar));
    for (name, be) in backends {
        for &(b, k, n) in &[(1, 1, 1), (13, 257, 33), (128, 784, 512)] {
            for density in [0.0, 0.2, 1.0] {
                let r = b + 2;
                let x: Vec<u8> = (0..r * k)
                    .map(|_| if (g.next() % 1000) as f64 / 1000.0 < density { (g.next() % 255 + 1) as u8 } else { 0 })
                    .collect();
                let rows: Vec<u32> = (0..b).map(|_| (g.next() % r as u64) as u32).collect();
                let (w, dz, h, dz2) = (g.vec(k * n), g.vec(b * n), g.vec(b * n), g.vec(b * 10));
                let d = Dims { k, n };
                let layout = be.weight_layout(k, n);
                let mut wp = vec![0f32; layout.len()];
                layout.pack(&w, &mut wp);
                let opt = &optimizers()[0];
                let state = state_for(opt, layout.len(), &mut g);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    for path in [AUTO, Layer1Path::Sparse, Layer1Path::Dense] {
                        let run = |ahead: bool| {
                            pool.install(|| {
                                let (mut dw, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
                                let (mut wu, mut su, mut scratch, mut dbu) =
                                    (wp.clone(), state.clone(), vec![0f32; layout.len()], vec![0f32; n]);
                                let (mut dw2, mut db2, mut ran) = (vec![0f32; n * 10], vec![0f32; 10], 0);
                                let mut work = || {
                                    be.output_backward(Grads::new(&mut dw2, &mut db2), &h, &dz2, Dims { k: n, n: 10 });
                                    ran += 1;
                                };
                                if ahead {
                                    let lists = be.overlap_input_lists(Rows::new(&x, &rows), k, path, &mut work);
                                    be.input_backward_listed(Grads::new(&mut dw, &mut db), None, lists, &dz, path, d);
                                    let lists = be.overlap_input_lists(Rows::new(&x, &rows), k, path, &mut work);
                                    let update = Some(update_of(opt, 2, &mut wu, &mut su));
                                    be.input_backward_listed(
                                        Grads::new(&mut scratch, &mut dbu),
                                        update,
                                        lists,
                                        &dz,
                                        path,
                                        d,
                                    );
                                } else {
                                    work();
                                    work();
                                    be.input_backward(
                                        Grads::new(&mut dw, &mut db),
                                        None,
                                        Rows::new(&x, &rows),
                                        &dz,
                                        path,
                                        d,
                                    );
                                    let update = Some(update_of(opt, 2, &mut wu, &mut su));
                                    be.input_backward(
                                        Grads::new(&mut scratch, &mut dbu),
                                        update,
                                        Rows::new(&x, &rows),
                                        &dz,
                                        path,
                                        d,
                                    );
                                }
                                (bits(&dw), bits(&db), update_bits(&wu, &su), bits(&dw2), ran)
                            })
                        };
                        let want = run(false);
                        // Listed ahead where the cores are near, by each
                        // task where they are far: the same bits.
                        for placement in [Placement::Near, Placement::Far] {
                            let got = pool.install(|| with_placement(placement, || run(true)));
                            assert_eq!(got.4, 2, "{name}: work ran {} times for two batches", got.4);
                            assert!(
                                want == got,
                                "{name} {b}x{k}x{n} density {density}, {threads} threads, {path:?}, {placement:?}: lists made ahead differ"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut g = Gen(14);
    let (b, k, n) = (128, 784, 512);
    let x = g.pixels((b + 5) * k);
    let rows: Vec<u32> = (0..b).map(|_| (g.next() % (b + 5) as u64) as u32).collect();
    let (w, bias, dz, w2) = (g.vec(k * n), g.vec(n), g.vec(b * n), g.vec(n * 10));
    let (dz2, b2) = (g.vec(b * 10), g.vec(10));
    let labels: Vec<u8> = (0..b).map(|_| (g.next() % 10) as u8).collect();
    let rows2: Vec<u32> = (0..b as u32).collect();
    for (name, be) in backends_under_test().into_iter().filter(|(n, _)| *n != "blas") {
        let layout = be.weight_layout(k, n);
        let mut wp = vec![0f32; layout.len()];
        layout.pack(&w, &mut wp);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut h = vec![0f32; b * n];
                be.input_forward(&mut h, Rows::new(&x, &rows), Weights::new(&wp, &bias), RELU, AUTO, Dims { k, n });
                let (mut dw, mut db) = (vec![0f32; layout.len()], vec![0f32; n]);
                be.input_backward(Grads::new(&mut dw, &mut db), None, Rows::new(&x, &rows), &dz, AUTO, Dims { k, n });
                let mut dh = vec![0f32; b * n];
                be.output_backward_input(&mut dh, &dz2, &w2, Derivative::new(RELU, &h), Dims { k: n, n: 10 });
                let (mut p, mut dz_out) = (vec![0f32; b * 10], vec![0f32; b * 10]);
                let stats = be.output_softmax_xent(
                    &mut p,
                    &mut dz_out,
                    &h,
                    Weights::new(&w2, &b2),
                    Rows::new(&labels, &rows2),
                    Dims { k: n, n: 10 },
                );
                let (mut dw2, mut db2) = (vec![0f32; n * 10], vec![0f32; 10]);
                be.output_backward(Grads::new(&mut dw2, &mut db2), &h, &dz2, Dims { k: n, n: 10 });
                (h, dw, db, dh, (p, dz_out, stats.loss_sum.to_bits(), stats.correct), (dw2, db2))
            })
        };
        let one = run(1);
        // 5 threads: the input layer's lists, by sample for the forward and
        // by pixel for dW, are then built once for all tasks
        // (SHARED_LISTS_MIN_THREADS), on this machine's cores too.
        for t in [2, 3, 5] {
            let other = run(t);
            let parts = [
                ("H", one.0 == other.0),
                ("dW", one.1 == other.1),
                ("db", one.2 == other.2),
                ("dH", one.3 == other.3),
                ("softmax-xent", one.4 == other.4),
                ("dW2, db2", one.5 == other.5),
            ];
            let differ: Vec<&str> = parts.iter().filter(|(_, same)| !same).map(|(p, _)| *p).collect();
            assert!(differ.is_empty(), "{name}: {t} threads differ from 1 in {differ:?}");
        }
    }
}

#[test]
fn panel_layout_round_trips() {
    let mut g = Gen(15);
    for (k, n, nr) in [(0, 3, 4), (3, 0, 4), (5, 7, 4), (5, 8, 4), (784, 512, 16), (3, 5, 32)] {
        let l = PanelLayout::panels_of(k, n, nr);
        let src = g.vec(k * n);
        let mut packed = vec![f32::NAN; l.len()];
        l.pack(&src, &mut packed);
        let mut back = vec![f32::NAN; k * n];
        l.unpack(&packed, &mut back);
        assert_eq!(back, src);
        assert_eq!(l.len(), n.div_ceil(nr) * k * nr);
    }
}

#[test]
fn forcing_a_missing_backend_is_an_error() {
    for name in kiln_kernels::BACKEND_NAMES {
        if let Err(e) = kiln_kernels::select(name) {
            assert!(e.to_string().contains(&format!("backend `{name}` cannot run here")), "{e}");
        }
    }
    assert!(kiln_kernels::select("gpu").err().unwrap().to_string().contains("unknown backend `gpu`"));
    assert_eq!(kiln_kernels::select("scalar").unwrap().name(), "scalar");
}

/// The activations the epilogues do not fuse (linear, sigmoid, tanh), on
/// the input layer: each backend against the scalar reference, both paths.
#[test]
fn input_forward_matches_scalar_for_every_activation() {
    let mut g = Gen(21);
    for (name, be) in backends_under_test() {
        for &(b, k, n) in &[(1, 1, 1), (7, 17, 15), (13, 257, 33), (96, 784, 64)] {
            let r = b + 3;
            let x = g.pixels(r * k);
            let rows: Vec<u32> = (0..b).map(|_| (g.next() % r as u64) as u32).collect();
            let (w, bias) = (g.vec(k * n), g.vec(n));
            let d = Dims { k, n };
            let layout = be.weight_layout(k, n);
            let mut wp = vec![f32::NAN; layout.len()];
            layout.pack(&w, &mut wp);
            let mag: Vec<f64> = (0..b * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k).map(|kk| (pixel(&x, &rows, k, i, kk) * f64::from(w[kk * n + j])).abs()).sum::<f64>()
                        + f64::from(bias[j]).abs()
                })
                .collect();
            for act in layer_activations() {
                let mut want = vec![f32::NAN; b * n];
                Scalar.input_forward(&mut want, Rows::new(&x, &rows), Weights::new(&w, &bias), act, AUTO, d);
                for path in [Layer1Path::Dense, Layer1Path::Sparse] {
                    let mut got = vec![f32::NAN; b * n];
                    be.input_forward(&mut got, Rows::new(&x, &rows), Weights::new(&wp, &bias), act, path, d);
                    // |act'| <= 1, plus one rounding of the activation on each side.
                    let what = format!("{name} {path:?} {act} {b}x{k}x{n}");
                    assert_close_act(&what, &got, &want, &mag, k);
                }
            }
        }
    }
}

/// [`assert_close`] for an activation's output: the pre-activation bound
/// (every activation here has `|act'| <= 1`) plus a few units in the last
/// place of the output for the activation's own rounding on each side.
fn assert_close_act(what: &str, got: &[f32], want: &[f32], mag: &[f64], k: usize) {
    assert_within(what, got, want, mag, k, 8.0);
}

/// (B, K, N) shapes of a hidden layer: degenerate, tiny, tile edges, and
/// the 784-512-256-10 network's 512 -> 256 layer.
const HIDDEN_SHAPES: &[(usize, usize, usize)] = &[
    (0, 5, 7),
    (1, 1, 1),
    (3, 0, 5),
    (2, 3, 0),
    (5, 7, 11),
    (6, 16, 16),
    (7, 17, 15),
    (13, 257, 32),
    (9, 63, 33),
    (25, 64, 32),
    (128, 512, 256),
];

/// Hidden layers (f32 input, kernel in the backend's layout): forward with
/// every activation, the weight gradient (and its fused update, bit-
/// identical to gradient then update), and the input gradient with every
/// activation's derivative, against the scalar reference.
#[test]
fn hidden_layer_ops_match_scalar() {
    let mut g = Gen(22);
    for (name, be) in backends_under_test() {
        for &(b, k, n) in HIDDEN_SHAPES {
            let d = Dims { k, n };
            let (a, w, bias, dz) = (g.vec(b * k), g.vec(k * n), g.vec(n), g.vec(b * n));
            let layout = be.weight_layout(k, n);
            let mut wp = vec![f32::NAN; layout.len()];
            layout.pack(&w, &mut wp);
            let fmag: Vec<f64> = (0..b * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k).map(|kk| (f64::from(a[i * k + kk]) * f64::from(w[kk * n + j])).abs()).sum::<f64>()
                        + f64::from(bias[j]).abs()
                })
                .collect();
            for act in layer_activations() {
                let mut want = vec![f32::NAN; b * n];
                Scalar.hidden_forward(&mut want, &a, Weights::new(&w, &bias), act, Layer1Path::Auto, d);
                let mut got = vec![f32::NAN; b * n];
                be.hidden_forward(&mut got, &a, Weights::new(&wp, &bias), act, Layer1Path::Auto, d);
                assert_close_act(&format!("{name} hidden forward {act} {b}x{k}x{n}"), &got, &want, &fmag, k);
            }

            let (mut dw_want, mut db_want) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
            Scalar.hidden_backward(Grads::new(&mut dw_want, &mut db_want), None, &a, &dz, Layer1Path::Auto, d);
            let (mut dwp, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
            be.hidden_backward(Grads::new(&mut dwp, &mut db), None, &a, &dz, Layer1Path::Auto, d);
            let mut dw = vec![f32::NAN; k * n];
            layout.unpack(&dwp, &mut dw);
            let mag: Vec<f64> = (0..k * n)
                .map(|e| (0..b).map(|i| (f64::from(a[i * k + e / n]) * f64::from(dz[i * n + e % n])).abs()).sum())
                .collect();
            assert_close(&format!("{name} hidden dW {b}x{k}x{n}"), &dw, &dw_want, &mag, b);
            let dbmag: Vec<f64> = (0..n).map(|j| (0..b).map(|i| f64::from(dz[i * n + j]).abs()).sum()).collect();
            assert_close(&format!("{name} hidden db {b}x{n}"), &db, &db_want, &dbmag, b);
            // Fused update = stored gradient, then the flat update, bit for
            // bit, for every rule.
            for opt in optimizers() {
                let s0 = state_for(&opt, layout.len(), &mut g);
                let (mut w1, mut s1) = (wp.clone(), s0.clone());
                be.update(update_of(&opt, 1, &mut w1, &mut s1), &dwp);
                let (mut w2, mut s2, mut scratch, mut db2) =
                    (wp.clone(), s0.clone(), vec![f32::NAN; layout.len()], vec![0.0; n]);
                let update = Some(update_of(&opt, 1, &mut w2, &mut s2));
                be.hidden_backward(Grads::new(&mut scratch, &mut db2), update, &a, &dz, Layer1Path::Auto, d);
                assert!(
                    update_bits(&w1, &s1) == update_bits(&w2, &s2),
                    "{name} fused hidden update {} {b}x{k}x{n}",
                    opt.describe()
                );
            }

            // The input gradient: `a` plays the layer input's activation output.
            let imag: Vec<f64> = (0..b * k)
                .map(|e| {
                    let (i, kk) = (e / k.max(1), e % k.max(1));
                    (0..n).map(|j| (f64::from(dz[i * n + j]) * f64::from(w[kk * n + j])).abs()).sum()
                })
                .collect();
            for act in layer_activations() {
                let y: Vec<f32> = a.iter().map(|&v| act.apply(v)).collect();
                let mut want = vec![f32::NAN; b * k];
                Scalar.hidden_backward_input(&mut want, &dz, &w, Derivative::new(act, &y), Layer1Path::Auto, d);
                let mut got = vec![f32::NAN; b * k];
                be.hidden_backward_input(&mut got, &dz, &wp, Derivative::new(act, &y), Layer1Path::Auto, d);
                // |act'(y)| <= 1 for all four, written in terms of y.
                assert_close(&format!("{name} hidden dA {act} {b}x{k}x{n}"), &got, &want, &imag, n + 4);
                let mut got = vec![f32::NAN; b * k];
                if n <= 64 {
                    be.output_backward_input(&mut got, &dz, &w, Derivative::new(act, &y), d);
                    assert_close(&format!("{name} output dA {act} {b}x{k}x{n}"), &got, &want, &imag, n + 4);
                }
            }
        }
    }
}

/// The hidden-layer ops give the same bits under 1, 2 and 3 threads.
#[test]
fn hidden_ops_do_not_depend_on_the_thread_count() {
    let mut g = Gen(23);
    let (b, k, n) = (128, 512, 256);
    let (a, w, bias, dz) = (g.vec(b * k), g.vec(k * n), g.vec(n), g.vec(b * n));
    // As a ReLU leaves them: about half of A and of dZ zero.
    let a_relu: Vec<f32> = a.iter().map(|v| v.max(0.0)).collect();
    let dz_masked: Vec<f32> = dz.iter().zip(g.vec(b * n)).map(|(&v, m)| if m > 0.0 { v } else { 0.0 }).collect();
    for (name, be) in backends_under_test().into_iter().filter(|(n, _)| *n != "blas") {
        let layout = be.weight_layout(k, n);
        let mut wp = vec![0f32; layout.len()];
        layout.pack(&w, &mut wp);
        for path in [Layer1Path::Dense, Layer1Path::Sparse] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let mut h = vec![0f32; b * n];
                    be.hidden_forward(
                        &mut h,
                        &a_relu,
                        Weights::new(&wp, &bias),
                        Activation::Sigmoid,
                        path,
                        Dims { k, n },
                    );
                    let (mut dw, mut db) = (vec![0f32; layout.len()], vec![0f32; n]);
                    be.hidden_backward(Grads::new(&mut dw, &mut db), None, &a_relu, &dz_masked, path, Dims { k, n });
                    let mut da = vec![0f32; b * k];
                    be.hidden_backward_input(
                        &mut da,
                        &dz_masked,
                        &wp,
                        Derivative::new(Activation::Relu, &a_relu),
                        path,
                        Dims { k, n },
                    );
                    (h, dw, db, da)
                })
            };
            let one = run(1);
            for t in [2, 3, 5] {
                let other = run(t);
                let parts = [
                    ("H", one.0 == other.0),
                    ("dW", one.1 == other.1),
                    ("db", one.2 == other.2),
                    ("dA", one.3 == other.3),
                ];
                let differ: Vec<&str> = parts.iter().filter(|(_, same)| !same).map(|(p, _)| *p).collect();
                assert!(differ.is_empty(), "{name} {path:?}: {t} threads differ from 1 in {differ:?}");
            }
        }
    }
}

/// `hidden_backward_both` (on two threads: the input gradient shared
/// between them) gives the bits of `hidden_backward_input` then
/// `hidden_backward` on one: dA, and dW and db or the updated W and its
/// state, at shapes from one unit to mnist_mlp's 512 -> 512 and densities
/// from empty to full, on every path and pool size.
#[test]
fn both_hidden_backward_products_give_the_bits_of_each_alone() {
    let mut g = Gen(31);
    let opts = optimizers();
    for (name, be) in backends_under_test() {
        for &(b, k, n) in &[(1, 1, 1), (7, 17, 15), (13, 257, 33), (3, 100, 1), (128, 512, 512), (96, 256, 200)] {
            for density in [0.0, 0.3, 0.55, 1.0] {
                let mut sparse_vec = |len: usize| -> Vec<f32> {
                    (0..len).map(|_| if (g.next() % 1000) as f64 / 1000.0 < density { g.f32() } else { 0.0 }).collect()
                };
                let (a, dz) = (sparse_vec(b * k), sparse_vec(b * n));
                let w = g.vec(k * n);
                let d = Dims { k, n };
                let layout = be.weight_layout(k, n);
                let mut wp = vec![0f32; layout.len()];
                layout.pack(&w, &mut wp);
                let opt = &opts[(b + k + n) % opts.len()];
                let state = state_for(opt, layout.len(), &mut g);
                let below = Derivative::new(Activation::Relu, &a);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for path in [Layer1Path::Auto, Layer1Path::Dense, Layer1Path::Sparse] {
                    // (dA, dW, db) without an update; (dA, W and state) with one.
                    let run = |threads: usize, both: bool| {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        pool.install(|| {
                            let mut out = Vec::new();
                            for fused in [false, true] {
                                let mut da = vec![f32::NAN; b * k];
                                let (mut dw, mut db) = (vec![f32::NAN; layout.len()], vec![f32::NAN; n]);
                                let (mut w1, mut st) = (wp.clone(), state.clone());
                                let update = fused.then(|| update_of(opt, 3, &mut w1, &mut st));
                                let grads = Grads::new(&mut dw, &mut db);
                                if both {
                                    let input = InputGrad::new(&mut da, &dz, &wp, below);
                                    be.hidden_backward_both(input, grads, update, &a, path, d);
                                } else {
                                    be.hidden_backward_input(&mut da, &dz, &wp, below, path, d);
                                    be.hidden_backward(grads, update, &a, &dz, path, d);
                                }
                                out.push(bits(&da));
                                out.push(if fused { update_bits(&w1, &st) } else { [bits(&dw), bits(&db)].concat() });
                            }
                            out
                        })
                    };
                    let alone = run(1, false);
                    for threads in [1, 2, 3] {
                        // BLAS's own products depend on the threads they
                        // are given (`hidden_ops_do_not_depend_on_the_thread_count`
                        // leaves it out): side by side, one each. The
                        // others' are the same on any number.
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let each = if pool.install(runs_side_by_side) { 1 } else { threads };
                        let want = if name == "blas" && each > 1 { run(each, false) } else { alone.clone() };
                        let got = run(threads, true);
                        let what = format!("{name} {path:?} {b}x{k}x{n} density {density}, {threads} threads");
                        assert!(got[0] == want[0] && got[2] == want[2], "{what}: dA differs");
                        assert!(got[1] == want[1], "{what}: dW or db differs");
                        assert!(got[3] == want[3], "{what}: the update ({}) differs", opt.describe());
                    }
                }
            }
        }
    }
}

/// Dropouts' masks folded into an input gradient (`Derivative::through_dropouts`)
/// give the bits of the product with no derivative followed by
/// `dropout_backward`, the separate pass they replace: for every backend
/// (scalar too), activation, path and thread count, one and two masks, in
/// the hidden layer's products alone and side by side and in the output
/// layer's.
#[test]
fn dropouts_folded_into_the_input_gradient_give_the_bits_of_a_separate_pass() {
    let mut g = Gen(47);
    let mut all: Vec<(&str, &dyn Backend<f32>)> = vec![("scalar", &Scalar)];
    all.extend(backends_under_test());
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (name, be) in all {
        for &(b, k, n) in &[(1, 1, 1), (7, 17, 15), (13, 100, 33), (128, 512, 64)] {
            let keep =
                |g: &mut Gen, rate: u64| (0..b * k).map(|_| u8::from(g.next() % 10 >= rate)).collect::<Vec<u8>>();
            let (k1, k2) = (keep(&mut g, 2), keep(&mut g, 5));
            let h: Vec<f32> = (0..b * k).map(|i| if i % 3 == 0 { 0.0 } else { g.f32() }).collect();
            let dz: Vec<f32> = (0..b * n).map(|i| if i % 2 == 0 { 0.0 } else { g.f32() }).collect();
            let w = g.vec(k * n);
            let layout = be.weight_layout(k, n);
            let mut wp = vec![0f32; layout.len()];
            layout.pack(&w, &mut wp);
            let d = Dims { k, n };
            let masks: [(Vec<&[u8]>, Vec<f32>); 2] = [(vec![&k1], vec![1.25]), (vec![&k1, &k2], vec![1.25, 2.0])];
            for act in layer_activations() {
                for (keeps, scales) in &masks {
                    let folded = Derivative::new(act, &h).through_dropouts(keeps, scales);
                    let linear = Derivative::new(Activation::Linear, &h);
                    for path in [Layer1Path::Dense, Layer1Path::Sparse] {
                        for threads in [1, 2, 3] {
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                            let what =
                                format!("{name} {act} {path:?} {b}x{k}x{n}, {} masks, {threads} threads", keeps.len());
                            pool.install(|| {
                                let mut want = vec![f32::NAN; b * k];
                                be.hidden_backward_input(&mut want, &dz, &wp, linear, path, d);
                                kiln_kernels::dropout_backward(&mut want, keeps, scales, act, &h);
                                let mut got = vec![f32::NAN; b * k];
                                be.hidden_backward_input(&mut got, &dz, &wp, folded, path, d);
                                assert!(bits(&got) == bits(&want), "{what}: hidden dA differs");
                                let (mut dw, mut db) = (vec![0f32; layout.len()], vec![0f32; n]);
                                let mut got = vec![f32::NAN; b * k];
                                let input = InputGrad::new(&mut got, &dz, &wp, folded);
                                be.hidden_backward_both(input, Grads::new(&mut dw, &mut db), None, &h, path, d);
                                assert!(bits(&got) == bits(&want), "{what}: dA side by side differs");
                                let mut want = vec![f32::NAN; b * k];
                                be.output_backward_input(&mut want, &dz, &w, linear, d);
                                kiln_kernels::dropout_backward(&mut want, keeps, scales, act, &h);
                                let mut got = vec![f32::NAN; b * k];
                                be.output_backward_input(&mut got, &dz, &w, folded, d);
                                assert!(bits(&got) == bits(&want), "{what}: output dA differs");
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Every instruction-set backend measures its ceilings (finite, positive,
/// its own tile) and the others report none. No speed is asserted: the
/// numbers belong to `cargo bench`.
#[test]
fn ceilings_are_measured_by_instruction_set_backends_only() {
    for (name, be) in backends_under_test() {
        let layout = be.weight_layout(1, 1);
        match be.ceilings(0.002) {
            Some(c) => {
                assert!(!["blas", "scalar"].contains(&name), "{name} reported ceilings");
                for (what, v) in [("peak", c.fma_peak), ("tile", c.tile_from_l1), ("load", c.load_per_fma)] {
                    assert!(v.is_finite() && v > 0.0, "{name}: {what} {v}");
                }
                assert!(c.sqrt_div_ns.is_finite() && c.sqrt_div_ns > 0.0, "{name}: sqrt + div {}", c.sqrt_div_ns);
                assert_eq!(c.tile.1, layout.len(), "{name}: the tile's columns are a panel's");
                assert!(c.tile.0 > 0);
            }
            None => assert!(["blas", "scalar"].contains(&name), "{name} measured no ceilings"),
        }
    }
    assert!(Backend::<f32>::ceilings(&Scalar, 0.002).is_none());
}

/// Inference's output layer (`output_softmax`, no labels) gives training's
/// probabilities bit for bit, on every backend (the scalar one included),
/// for every shape, batches above and below the parallel block size too.
#[test]
fn output_softmax_is_the_training_forwards_probabilities() {
    let mut g = Gen(31);
    let all: Vec<(&str, &dyn Backend<f32>)> =
        backends_under_test().into_iter().chain(std::iter::once(("scalar", &Scalar as &dyn Backend<f32>))).collect();
    for (name, be) in all {
        for &(b, k, n) in SHAPES.iter().chain(&[(9, 30, 10), (1000, 64, 10), (17, 5, 1)]) {
            let n = if n == 0 { 0 } else { n.min(10) };
            let d = Dims { k, n };
            let labels = vec![0u8; b];
            let rows: Vec<u32> = (0..b as u32).collect();
            let h: Vec<f32> = g.vec(b * k).iter().map(|v| v.max(0.0)).collect();
            let (w, bias) = (g.vec(k * n), g.vec(n));
            let (mut p0, mut dz) = (vec![f32::NAN; b * n], vec![f32::NAN; b * n]);
            if n > 0 {
                be.output_softmax_xent(&mut p0, &mut dz, &h, Weights::new(&w, &bias), Rows::new(&labels, &rows), d);
            }
            let mut p1 = vec![f32::NAN; b * n];
            be.output_softmax(&mut p1, &h, Weights::new(&w, &bias), d);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p1), bits(&p0), "{name} {b}x{k}x{n}");
        }
    }
}
