//! The scalar reference kernels against naive f64 triple loops written
//! independently here: exact on small integer inputs, within the f32 error
//! bound of a length-K dot product on random inputs, over many shapes
//! (0, 1, odd, the training shapes), with NaN-filled outputs to prove that
//! `beta = 0` never reads them, and identical under any thread count.

use kiln_kernels::scalar::{self, Scalar};
use kiln_kernels::{Activation, Backend, Derivative, Dims, Grads, Layer1Path, Optimizer, Rows, Weights};

mod common;
use common::Gen;

const EPS: f64 = 1.0 / (1u64 << 24) as f64;

/// Asserts `|got - want| <= (k + 2) * 2^-24 * mag + tiny` elementwise, where
/// `mag` is the sum of magnitudes of the terms behind each element.
fn assert_close(what: &str, got: &[f32], want: &[f64], mag: &[f64], k: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = (k as f64 + 2.0) * EPS * m + 1e-30;
        assert!((f64::from(g) - w).abs() <= bound, "{what}[{i}]: got {g}, want {w}, bound {bound:e}");
    }
}

/// Naive `relu(X W + b)` in f64, and the magnitudes of its terms.
fn naive_forward(x: &[u8], rows: &[u32], w: &[f32], b: &[f32], k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = Vec::new();
    let mut mag = Vec::new();
    for &r in rows {
        for j in 0..n {
            let (mut s, mut m) = (f64::from(b[j]), f64::from(b[j]).abs());
            for kk in 0..k {
                let xv = f64::from(f32::from(x[r as usize * k + kk]) / 255.0);
                s += xv * f64::from(w[kk * n + j]);
                m += (xv * f64::from(w[kk * n + j])).abs();
            }
            out.push(s.max(0.0));
            mag.push(m);
        }
    }
    (out, mag)
}

/// The shapes every kernel test sweeps: degenerate, tiny, odd, and the
/// training shapes (784 -> 512 -> 10 at batch 128 and the last batch of 96).
const SHAPES: &[(usize, usize, usize)] = &[
    (0, 3, 4),
    (1, 1, 1),
    (1, 784, 1),
    (2, 3, 0),
    (3, 0, 5),
    (5, 7, 9),
    (7, 17, 33),
    (13, 63, 31),
    (17, 65, 15),
    (96, 784, 512),
    (128, 784, 512),
    (128, 512, 10),
];

fn rows_for(g: &mut Gen, b: usize, dataset_rows: usize) -> Vec<u32> {
    (0..b).map(|_| (g.next() % dataset_rows as u64) as u32).collect()
}

#[test]
fn forward_u8_matches_naive_over_shapes_and_never_reads_its_output() {
    let mut g = Gen(1);
    for &(b, k, n) in SHAPES {
        let r = b + 3;
        let x = g.pixels(r * k);
        let rows = rows_for(&mut g, b, r);
        let (w, bias) = (g.vec(k * n), g.vec(n));
        let mut h = vec![f32::NAN; b * n];
        scalar::input_forward(&mut h, Rows::new(&x, &rows), Weights::new(&w, &bias), Activation::Relu, Dims { k, n });
        let (want, mag) = naive_forward(&x, &rows, &w, &bias, k, n);
        assert_close(&format!("forward {b}x{k}x{n}"), &h, &want, &mag, k);
    }
}

#[test]
fn small_integer_inputs_are_exact() {
    // Pixels 0 and 255 are exactly 0 and 1; integer weights make every
    // product and sum exact in f32.
    let (b, k, n) = (3, 5, 4);
    let x: Vec<u8> = (0..b * k).map(|i| if i % 3 == 0 { 255 } else { 0 }).collect();
    let rows: Vec<u32> = vec![2, 0, 1];
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 - 1.0).collect();
    let mut h = vec![f32::NAN; b * n];
    scalar::input_forward(&mut h, Rows::new(&x, &rows), Weights::new(&w, &bias), Activation::Relu, Dims { k, n });
    let (want, _) = naive_forward(&x, &rows, &w, &bias, k, n);
    assert_eq!(h.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), want);

    let dz: Vec<f32> = (0..b * n).map(|i| (i % 5) as f32 - 2.0).collect();
    let (mut dw, mut db) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
    scalar::input_backward(Grads::new(&mut dw, &mut db), Rows::new(&x, &rows), &dz, Dims { k, n });
    for kk in 0..k {
        for j in 0..n {
            let want: f32 = (0..b).map(|i| f32::from(x[rows[i] as usize * k + kk]) / 255.0 * dz[i * n + j]).sum();
            assert_eq!(dw[kk * n + j], want);
        }
    }
    for j in 0..n {
        assert_eq!(db[j], (0..b).map(|i| dz[i * n + j]).sum::<f32>());
    }
}

#[test]
fn softmax_xent_matches_naive() {
    let mut g = Gen(2);
    for &(b, k, _) in SHAPES {
        let n = 10;
        let r = b + 2;
        let labels: Vec<u8> = (0..r).map(|_| (g.next() % 10) as u8).collect();
        let rows = rows_for(&mut g, b, r);
        let (h, w, bias) = (g.vec(b * k).iter().map(|v| v.max(0.0) * 3.0).collect::<Vec<_>>(), g.vec(k * n), g.vec(n));
        let (mut p, mut dz) = (vec![f32::NAN; b * n], vec![f32::NAN; b * n]);
        let st = scalar::output_softmax_xent(
            &mut p,
            &mut dz,
            &h,
            Weights::new(&w, &bias),
            Rows::new(&labels, &rows),
            Dims { k, n },
        );
        let (mut loss, mut correct, mut loss_bound) = (0f64, 0usize, 0f64);
        for i in 0..b {
            let logits: Vec<f64> = (0..n)
                .map(|j| {
                    (0..k).map(|kk| f64::from(h[i * k + kk]) * f64::from(w[kk * n + j])).sum::<f64>()
                        + f64::from(bias[j])
                })
                .collect();
            // Rounding bound of each f32 logit (a length-k dot product plus
            // the bias); a probability moves by at most twice the largest
            // logit error, plus a few ulps from exp and the division.
            let logit_err = (0..n)
                .map(|j| {
                    let mag: f64 = (0..k).map(|kk| (f64::from(h[i * k + kk]) * f64::from(w[kk * n + j])).abs()).sum();
                    (k as f64 + 2.0) * EPS * (mag + f64::from(bias[j]).abs())
                })
                .fold(0f64, f64::max);
            let tol = 2.0 * logit_err + 16.0 * EPS;
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let y = labels[rows[i] as usize] as usize;
            for j in 0..n {
                let pj = (logits[j] - m).exp() / s;
                assert!((f64::from(p[i * n + j]) - pj).abs() <= tol, "p[{i},{j}]: {} vs {pj}", p[i * n + j]);
                let d = (pj - if j == y { 1.0 } else { 0.0 }) / b as f64;
                assert!((f64::from(dz[i * n + j]) - d).abs() <= (tol + 2.0 * EPS) / b as f64, "dz[{i},{j}]");
            }
            let py = ((logits[y] - m).exp() / s).clamp(1e-7, 1.0 - 1e-7);
            loss -= py.ln();
            loss_bound += tol / py + (i as f64 + 2.0) * EPS * loss.abs();
            let best = (0..n).fold(0, |bi, j| if logits[j] > logits[bi] { j } else { bi });
            correct += usize::from(best == y);
        }
        assert!((f64::from(st.loss_sum) - loss).abs() <= loss_bound, "loss {b}x{k}: {} vs {loss}", st.loss_sum);
        // Ties between logits closer than rounding could flip an argmax; the
        // random data here has none.
        assert_eq!(st.correct, correct, "correct {b}x{k}");
    }
}

#[test]
fn backward_products_match_naive() {
    let mut g = Gen(3);
    for &(b, k, n) in SHAPES {
        let r = b + 1;
        let x = g.pixels(r * k);
        let rows = rows_for(&mut g, b, r);
        let (h, dz, w) = (g.vec(b * k), g.vec(b * n), g.vec(k * n));
        let d = Dims { k, n };

        let (mut dw, mut db) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
        scalar::dense_backward(Grads::new(&mut dw, &mut db), &h, &dz, d);
        let (mut dw8, mut db8) = (vec![f32::NAN; k * n], vec![f32::NAN; n]);
        scalar::input_backward(Grads::new(&mut dw8, &mut db8), Rows::new(&x, &rows), &dz, d);
        let (mut want, mut mag, mut want8, mut mag8) = (vec![], vec![], vec![], vec![]);
        for kk in 0..k {
            for j in 0..n {
                let terms = (0..b).map(|i| f64::from(h[i * k + kk]) * f64::from(dz[i * n + j]));
                want.push(terms.clone().sum());
                mag.push(terms.map(f64::abs).sum());
                let terms8 = (0..b)
                    .map(|i| f64::from(f32::from(x[rows[i] as usize * k + kk]) / 255.0) * f64::from(dz[i * n + j]));
                want8.push(terms8.clone().sum());
                mag8.push(terms8.map(f64::abs).sum());
            }
        }
        assert_close(&format!("dW {b}x{k}x{n}"), &dw, &want, &mag, b);
        assert_close(&format!("dW u8 {b}x{k}x{n}"), &dw8, &want8, &mag8, b);
        let dbw: Vec<f64> = (0..n).map(|j| (0..b).map(|i| f64::from(dz[i * n + j])).sum()).collect();
        let dbm: Vec<f64> = (0..n).map(|j| (0..b).map(|i| f64::from(dz[i * n + j]).abs()).sum()).collect();
        assert_close("db", &db, &dbw, &dbm, b);
        assert_close("db u8", &db8, &dbw, &dbm, b);

        let mut dh = vec![f32::NAN; b * k];
        scalar::backward_input(&mut dh, &dz, &w, Derivative::new(Activation::Relu, &h), d);
        let (mut want, mut mag) = (vec![], vec![]);
        for i in 0..b {
            for kk in 0..k {
                let terms = (0..n).map(|j| f64::from(dz[i * n + j]) * f64::from(w[kk * n + j]));
                let on = h[i * k + kk] > 0.0;
                want.push(if on { terms.clone().sum() } else { 0.0 });
                mag.push(if on { terms.map(f64::abs).sum() } else { 0.0 });
            }
        }
        assert_close(&format!("dH {b}x{k}x{n}"), &dh, &want, &mag, n);
    }
}

/// Each rule, element by element, against Keras's `update_step` written
/// out here in f32 (the constants as Python forms them: `1 - rho` in f64).
#[test]
fn every_update_rule_is_keras_formula_elementwise() {
    let mut g = Gen(4);
    for opt in common::optimizers() {
        for len in [0usize, 1, 7, 1000] {
            let (w0, gr) = (g.vec(len), g.vec(len));
            let s0 = common::state_for(&opt, len, &mut g);
            let (mut w, mut st) = (w0.clone(), s0.clone());
            let t = 5;
            scalar::update(common::update_of(&opt, t, &mut w, &mut st), &gr);
            for i in 0..len {
                let (gi, wi) = (gr[i], w0[i]);
                let (want_w, want_s): (f32, [f32; 3]) = match opt {
                    Optimizer::RmsProp(o) => {
                        let (lr, rho, decay, eps) = (o.lr as f32, o.rho as f32, (1.0 - o.rho) as f32, o.eps as f32);
                        let v = rho * s0[0][i] + decay * (gi * gi);
                        let (den, a) = if o.centered {
                            let a = rho * s0[2][i] + decay * gi;
                            (v - a * a + eps, a)
                        } else {
                            (v + eps, 0.0)
                        };
                        let inc = lr * gi / den.sqrt();
                        if o.momentum > 0.0 {
                            let m = o.momentum as f32 * s0[1][i] + inc;
                            (wi - m, [v, m, a])
                        } else {
                            (wi - inc, [v, 0.0, a])
                        }
                    }
                    Optimizer::Sgd(o) => {
                        let (lr, mu) = (o.lr as f32, o.momentum as f32);
                        if o.momentum == 0.0 {
                            (wi - gi * lr, [0.0; 3])
                        } else {
                            let m = s0[0][i] * mu - gi * lr;
                            (if o.nesterov { wi + (m * mu - gi * lr) } else { wi + m }, [m, 0.0, 0.0])
                        }
                    }
                    Optimizer::Adam(o) => {
                        let lr = o.lr as f32;
                        let tf = t as f32;
                        let alpha = lr * (1.0 - (o.beta_2 as f32).powf(tf)).sqrt() / (1.0 - (o.beta_1 as f32).powf(tf));
                        let wd = o.weight_decay.map_or(wi, |wd| wi - wi * wd as f32 * lr);
                        let m = s0[0][i] + (gi - s0[0][i]) * (1.0 - o.beta_1) as f32;
                        let v = s0[1][i] + (gi * gi - s0[1][i]) * (1.0 - o.beta_2) as f32;
                        (wd - m * alpha / (v.sqrt() + o.eps as f32), [m, v, 0.0])
                    }
                };
                let what = format!("{} element {i}", opt.describe());
                assert_eq!(w[i].to_bits(), want_w.to_bits(), "{what}: w");
                for (k, used) in opt.slots().iter().enumerate() {
                    if used.is_some() {
                        assert_eq!(st[k][i].to_bits(), want_s[k].to_bits(), "{what}: slot {k}");
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut g = Gen(5);
    let (b, k, n) = (128, 784, 512);
    let x = g.pixels((b + 5) * k);
    let rows = rows_for(&mut g, b, b + 5);
    let (w, bias, dz) = (g.vec(k * n), g.vec(n), g.vec(b * n));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut h = vec![0f32; b * n];
            Scalar.input_forward(
                &mut h,
                Rows::new(&x, &rows),
                Weights::new(&w, &bias),
                Activation::Relu,
                Layer1Path::Auto,
                Dims { k, n },
            );
            let (mut dw, mut db) = (vec![0f32; k * n], vec![0f32; n]);
            Scalar.input_backward(
                Grads::new(&mut dw, &mut db),
                None,
                Rows::new(&x, &rows),
                &dz,
                Layer1Path::Auto,
                Dims { k, n },
            );
            (h, dw, db)
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
#[should_panic(expected = "row index 9 out of range for a dataset of 2 rows")]
fn out_of_range_rows_are_caught() {
    let mut h = vec![0f32; 2];
    scalar::input_forward(
        &mut h,
        Rows { data: &[0; 4], rows: &[0, 9] },
        Weights { kernel: &[1.0, 1.0], bias: &[0.0] },
        Activation::Relu,
        Dims { k: 2, n: 1 },
    );
}
