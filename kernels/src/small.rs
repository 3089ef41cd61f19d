//! Generic bodies of the output layer's ops (`N` = the classes, 10 for
//! MNIST: the "small-n" case a packed GEMM would waste its tile on). The
//! kernel `W (K, N)` is transposed once per call into `W^T (N, K)` so that
//! every product runs along contiguous rows of length `K`, with up to ten
//! classes' accumulators in registers.
//!
//! Each function works on a slice of rows (or elements) that the caller
//! picked; a row's result never depends on how rows are split over threads.

use crate::simd::Simd;

/// Accumulators the output-layer products keep in registers: ten classes
/// of one row, or five of each of two rows (two rows of ten each, 20 zmm
/// accumulators, measured slower: docs/performance-log.md).
const ACC: usize = 10;

/// How many of the `left` remaining classes the output-layer products take next
/// with `rows` rows (or vectors) of accumulators: `ACC / rows` while that
/// many are left, else 1.
fn class_block(left: usize, rows: usize) -> usize {
    let full = ACC / rows;
    if left >= full {
        full
    } else {
        1
    }
}

/// Logits of rows of `H (B, K)` against `W^T (N, K)` plus `b`, written into
/// `p (B, N)`, to be finished by the shared softmax row. Rows are taken in
/// pairs, so that each vector of `W^T` loaded serves two rows, with up to
/// `ACC / 2` classes of each in registers (independent FMA chains). Each logit
/// is the same chain whatever the grouping: lanes accumulated along the
/// row in order, then [`Simd::hsum`], then the tail, then the bias.
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `wt` is `(N, K)`, `p` is `(B, N)`.
#[inline(always)]
pub(crate) unsafe fn logits<S: Simd>(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize) {
    if n == 0 {
        return;
    }
    let (rows, hrow) = (p.len() / n, |i: usize| &h[i * k..(i + 1) * k]);
    let mut i = 0;
    while i + 2 <= rows {
        let (p0, p1) = p[i * n..(i + 2) * n].split_at_mut(n);
        // SAFETY: forwarded contract.
        unsafe { logit_rows::<S, 2>([p0, p1], [hrow(i), hrow(i + 1)], wt, b, k, n) };
        i += 2;
    }
    if i < rows {
        // SAFETY: forwarded contract.
        unsafe { logit_rows::<S, 1>([&mut p[i * n..(i + 1) * n]], [hrow(i)], wt, b, k, n) };
    }
}

/// [`logits`] of `R` rows together.
///
/// # Safety
/// As [`logits`]; each `p` row holds `n` floats, each `h` row `k`.
#[inline(always)]
unsafe fn logit_rows<S: Simd, const R: usize>(
    prows: [&mut [f32]; R],
    hrows: [&[f32]; R],
    wt: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
) {
    let body = k / S::LANES * S::LANES;
    let mut c0 = 0;
    while c0 < n {
        let cb = class_block(n - c0, R);
        let mut sums = [[0f32; ACC]; R];
        // SAFETY: loads cover LANES floats below `body <= k` of the rows
        // of H and of rows c0 .. c0 + cb of W^T; the CPU runs S (caller).
        unsafe {
            match cb {
                ACC => dots::<S, R, ACC>(&mut sums, hrows, &wt[c0 * k..], k, body),
                5 => dots::<S, R, 5>(&mut sums, hrows, &wt[c0 * k..], k, body),
                _ => dots::<S, R, 1>(&mut sums, hrows, &wt[c0 * k..], k, body),
            }
        }
        for c in 0..cb {
            let wrow = &wt[(c0 + c) * k..(c0 + c + 1) * k];
            for (r, hrow) in hrows.iter().enumerate() {
                let tail: f32 = (body..k).map(|kk| hrow[kk] * wrow[kk]).sum();
                prows[r][c0 + c] = sums[r][c] + tail + b[c0 + c];
            }
        }
        c0 += cb;
    }
}

/// `sums[r][c] = dot(h[r][..body], wt[c * k ..][..body])` for `R` rows and
/// `C` rows of `wt`, with `R * C` accumulators in registers (each vector of
/// `wt` loaded once for all rows).
///
/// # Safety
/// The CPU runs `S`; `body <= k` is a multiple of `LANES`, each `h` row
/// holds `body` floats and `wt` at least `(C - 1) * k + body`.
#[inline(always)]
unsafe fn dots<S: Simd, const R: usize, const C: usize>(
    sums: &mut [[f32; ACC]; R],
    h: [&[f32]; R],
    wt: &[f32],
    k: usize,
    body: usize,
) {
    let l = S::LANES;
    assert!(h.iter().all(|r| r.len() >= body) && wt.len() >= (C - 1) * k + body && C <= ACC);
    // SAFETY: the loads stay below the lengths checked above; S is present.
    unsafe {
        let mut acc = [[S::zero(); C]; R];
        for kv in (0..body).step_by(l) {
            let mut hv = [S::zero(); R];
            for (v, row) in hv.iter_mut().zip(h) {
                *v = S::load(row.as_ptr().add(kv));
            }
            for c in 0..C {
                let wv = S::load(wt.as_ptr().add(c * k + kv));
                for (a, &v) in acc.iter_mut().zip(&hv) {
                    a[c] = S::fmadd(v, wv, a[c]);
                }
            }
        }
        for (s, a) in sums.iter_mut().zip(&acc) {
            for (sc, &ac) in s.iter_mut().zip(a) {
                *sc = S::hsum(ac);
            }
        }
    }
}

/// Vectors of a row handled together in `input_grad_rows`.
const KB: usize = 4;

/// `dH[i, :] = dZ[i, :] W^T`, times `[H[i, :] > 0]` when `mask` (ReLU's
/// derivative), for rows of `dH (B, K)`, with `W^T (N, K)`. Each element is
/// the chain `sum over c = 0, 1, .. of dZ[i, c] W^T[c, k]` in registers,
/// `KB` vectors of the row at a time.
///
/// # Safety
/// The CPU runs `S`; `dh` and `h` are `(B, K)`, `dz` is `(B, N)`, `wt` is `(N, K)`.
#[inline(always)]
pub(crate) unsafe fn input_grad_rows<S: Simd>(
    dh: &mut [f32],
    dz: &[f32],
    wt: &[f32],
    h: &[f32],
    (k, n, mask): (usize, usize, bool),
) {
    let l = S::LANES;
    let body = k / (l * KB) * (l * KB);
    for (i, (dhrow, hrow)) in dh.chunks_exact_mut(k).zip(h.chunks_exact(k)).enumerate() {
        let g = &dz[i * n..(i + 1) * n];
        // SAFETY: every access covers LANES floats below `body <= k` of
        // this row of dH and H, and of each row of W^T; the CPU runs S.
        unsafe {
            for kv in (0..body).step_by(l * KB) {
                let mut acc = [S::zero(); KB];
                for (c, &gc) in g.iter().enumerate() {
                    let gv = S::splat(gc);
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = S::fmadd(gv, S::load(wt.as_ptr().add(c * k + kv + u * l)), *a);
                    }
                }
                for (u, &a) in acc.iter().enumerate() {
                    let at = kv + u * l;
                    let g = if mask { S::keep_where_positive(S::load(hrow.as_ptr().add(at)), a) } else { a };
                    S::store(dhrow.as_mut_ptr().add(at), g);
                }
            }
        }
        for kk in body..k {
            let mut acc = 0f32;
            for (c, &gc) in g.iter().enumerate() {
                acc = gc.mul_add(wt[c * k + kk], acc);
            }
            dhrow[kk] = if !mask || hrow[kk] > 0.0 { acc } else { 0.0 };
        }
    }
}

/// `dW (K, N) := H^T dZ` for rows `k0 .. k0 + width` of `dW`, given as
/// `dw (width, N)`. Each element is the chain over the batch rows in order,
/// `dZ[i, c]` broadcast against a vector of `H[i, ..]`: `V` vectors of
/// hidden units by `ACC / V` classes in registers, the tile then written to
/// its rows of `dW`. `V = 1` suits an FMA that broadcasts from memory
/// (AVX-512: one load per ten FMAs); without one (AVX2, NEON) every class
/// costs a broadcast load, and `V = 2` shares each between two FMAs.
///
/// # Safety
/// The CPU runs `S`; `h` is `(B, K)`, `dz` is `(B, N)`.
#[inline(always)]
pub(crate) unsafe fn weight_grad_rows<S: Simd, const V: usize>(
    dw: &mut [f32],
    k0: usize,
    h: &[f32],
    dz: &[f32],
    k: usize,
    n: usize,
) {
    if n == 0 {
        return;
    }
    let l = S::LANES;
    let (width, batch) = (dw.len() / n, dz.len() / n);
    assert!(k0 + width <= k && h.len() >= batch * k && dw.len() == width * n);
    let mut u = 0;
    // SAFETY: `grad_units`' contract: units u .. u + V * LANES <= width.
    unsafe {
        while u + V * l <= width {
            grad_units::<S, V>(dw, u, k0, h, dz, (k, n, batch));
            u += V * l;
        }
        while u + l <= width {
            grad_units::<S, 1>(dw, u, k0, h, dz, (k, n, batch));
            u += l;
        }
    }
    for kk in u..width {
        for c in 0..n {
            let mut acc = 0f32;
            for i in 0..batch {
                acc = dz[i * n + c].mul_add(h[i * k + k0 + kk], acc);
            }
            dw[kk * n + c] = acc;
        }
    }
}

/// Hidden units `u .. u + V * LANES` (of the block at `k0`) of
/// [`weight_grad_rows`], every class.
///
/// # Safety
/// The CPU runs `S`; shapes as in [`weight_grad_rows`], the units inside
/// `dw`'s rows and `k0 + u + V * LANES <= k`.
#[inline(always)]
unsafe fn grad_units<S: Simd, const V: usize>(
    dw: &mut [f32],
    u: usize,
    k0: usize,
    h: &[f32],
    dz: &[f32],
    (k, n, batch): (usize, usize, usize),
) {
    let mut c0 = 0;
    while c0 < n {
        let cb = class_block(n - c0, V);
        // SAFETY: forwarded contract; classes c0 .. c0 + cb <= n.
        unsafe {
            match cb {
                ACC => grad_tile::<S, V, ACC>(dw, (u, c0), k0, h, dz, (k, n, batch)),
                5 => grad_tile::<S, V, 5>(dw, (u, c0), k0, h, dz, (k, n, batch)),
                _ => grad_tile::<S, V, 1>(dw, (u, c0), k0, h, dz, (k, n, batch)),
            }
        }
        c0 += cb;
    }
}

/// One `V` vectors x `C` classes tile of [`weight_grad_rows`].
///
/// # Safety
/// As [`grad_units`], and `c0 + C <= n`.
#[inline(always)]
unsafe fn grad_tile<S: Simd, const V: usize, const C: usize>(
    dw: &mut [f32],
    (u, c0): (usize, usize),
    k0: usize,
    h: &[f32],
    dz: &[f32],
    (k, n, batch): (usize, usize, usize),
) {
    let l = S::LANES;
    assert!(k0 + u + V * l <= k && c0 + C <= n && h.len() >= batch * k && dz.len() >= batch * n);
    assert!(dw.len() >= (u + V * l) * n && l <= 16);
    let mut lanes = [0f32; 16];
    // SAFETY: loads cover LANES floats of row i < B of H at columns below
    // k0 + u + V * LANES <= k, and dZ[i, c0 + c] with c0 + C <= n; the
    // store fills `lanes`, 16 >= LANES floats (all checked above); S is
    // present (caller).
    unsafe {
        let mut acc = [[S::zero(); C]; V];
        for i in 0..batch {
            let mut hv = [S::zero(); V];
            for (v, x) in hv.iter_mut().enumerate() {
                *x = S::load(h.as_ptr().add(i * k + k0 + u + v * l));
            }
            for c in 0..C {
                let g = S::splat(*dz.get_unchecked(i * n + c0 + c));
                for (a, &x) in acc.iter_mut().zip(&hv) {
                    a[c] = S::fmadd(g, x, a[c]);
                }
            }
        }
        // Lane j of acc[v][c] is dW[k0 + u + v * LANES + j, c0 + c].
        for (v, a) in acc.iter().enumerate() {
            for (c, &ac) in a.iter().enumerate() {
                S::store(lanes.as_mut_ptr(), ac);
                for (j, &x) in lanes[..l].iter().enumerate() {
                    dw[(u + v * l + j) * n + c0 + c] = x;
                }
            }
        }
    }
}
