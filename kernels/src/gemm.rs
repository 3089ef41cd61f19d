//! The packed GEMM behind the big products of the input and hidden layers,
//! generic over the vector instruction set `S` and the register tile `MR x
//! NR` (`NR = NV x S::LANES`, see `params.rs`).
//!
//! # Contract
//! `C := A B` (BLAS order with `alpha = 1`, `beta = 0`: **C is never read
//! before it is written**, so it may hold NaN), optionally followed by the
//! epilogue `C := C + bias`, then ReLU if asked, applied once, on the last
//! k-block. All matrices are row-major except where a panel layout is named.
//!
//! * `forward_panels`: `H (m, N) = X W + b` (+ ReLU) where `X` ([`Lhs`]) is
//!   the input layer's pixels, `X[i, k] = x[rows[i], k] / 255` gathered
//!   from the mapped u8 data while packing A, or a hidden layer's f32 input
//!   `(m, K)`; `W (K, N)` already in the panel layout, so B is never
//!   packed.
//! * `input_grad_panels`: a hidden layer's input gradient `dA (B, K) = dZ
//!   W^T`, computed as `dA^T = W dZ^T` so that `W`'s own panel rows are the
//!   A micro-panels (`MR` units, one panel of `NR` reduction steps at a
//!   time) and `dZ^T` is packed (`pack_dzt`, as small as `dZ`) instead of
//!   `W^T` (as large as `W`); each tile is written to `dA` transposed. The
//!   sparse path, which runs the forward's sparse product with `dZ` as `X`,
//!   still needs `W^T` in a panel layout (`pack_wt`).
//! * `weight_grad_panels`: `dW (K, N) = X^T dZ`, `X` as above, packed
//!   once per call as k-major `X^T` micro-panels (`pack_xt` from pixels,
//!   `pack_at_kmajor` from f32 rows) shared by all tasks; `dW` is written
//!   straight into the panel layout, `dZ (B, N)` is packed.
//!
//! # Packed layouts
//! ```text
//! A micro-panel (MR rows x kc):  a[r * kc + k]      B micro-panel (kc x NR):  b[k * NR + c]
//!   r=0: a00 a01 .. a0(kc-1)                          k=0: b00 b01 .. b0(NR-1)
//!   r=1: a10 a11 .. a1(kc-1)                          k=1: b10 b11 .. b1(NR-1)
//! The forward's A stays row-major so that layer 1's packing converts whole
//! runs of pixels with vector instructions; the microkernel broadcasts from
//! MR sequential streams. The weight gradient's A (`X^T`, reduced over the
//! batch) is k-major, `a[k * MR + r]`: there each batch row's MR pixels or
//! columns are contiguous in `X`, so packing is a contiguous copy (and a
//! vector conversion for pixels) and the microkernel reads one stream.
//! ```
//! A panel layout of a `(K, N)` matrix is exactly a sequence of B
//! micro-panels of height `K`, one per `NR` columns (`PanelLayout`).
//!
//! # Edge tiles
//! Rows past `m` are packed as zeros and columns past `N` are zero in every
//! panel, so the microkernel always computes a full `MR x NR` tile; a tile
//! that sticks out of C goes through a small buffer and only its valid part
//! is copied out (and, on later k-blocks, in).
//!
//! # Determinism
//! Each element of C is one FMA chain over `k = 0, 1, ..., K-1` (later
//! k-blocks start from the stored partial sum), whatever tile, block or
//! thread computes it: results do not depend on the thread count.

use crate::aligned::window;
use crate::caches::blocking;
use crate::optim::LaneRule;
use crate::params::MAX_TILE;
use crate::simd::Simd;
use crate::Update;

/// The left operand `X (m, K)` of a forward product.
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
    /// The input layer's batch: `X[i, k] = x[rows[i] * K + k] / 255`.
    Pixels { x: &'a [u8], rows: &'a [u32] },
    /// A hidden layer's input, `(m, K)` row-major.
    Rows { a: &'a [f32], m: usize },
}

impl Lhs<'_> {
    /// Rows `m` of `X`.
    fn rows(&self) -> usize {
        match self {
            Lhs::Pixels { rows, .. } => rows.len(),
            Lhs::Rows { m, .. } => *m,
        }
    }

    /// Packs `X[i0 .. i0+MR, pc .. pc+kc]` into `dst` (`MR x kc`, row-major;
    /// rows at or past `m` are zero).
    ///
    /// # Safety
    /// The CPU runs `S`; the shapes were checked by the caller (every
    /// `rows[i] * k + k <= x.len()`, or `a` holds `m * k` floats).
    #[inline(always)]
    unsafe fn pack<S: Simd, const MR: usize>(&self, dst: &mut [f32], i0: usize, (pc, kc, k): (usize, usize, usize)) {
        match *self {
            // SAFETY: forwarded contract.
            Lhs::Pixels { x, rows } => unsafe { pack_x_rows::<S, MR>(dst, x, rows, i0, (pc, kc, k)) },
            Lhs::Rows { a, m } => {
                for (r, out) in dst.chunks_exact_mut(kc).enumerate().take(MR) {
                    if i0 + r < m {
                        out.copy_from_slice(&a[(i0 + r) * k + pc..(i0 + r) * k + pc + kc]);
                    } else {
                        out.fill(0.0);
                    }
                }
            }
        }
    }
}

/// The k-blocks of a reduction of length `k`: equal lengths no longer
/// than the machine's `kc_max` (loop 4; `caches.rs`).
fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    let kc = k.div_ceil(k.div_ceil(blocking().kc_max).max(1)).max(1);
    (0..k).step_by(kc).map(move |pc| (pc, kc.min(k - pc)))
}

/// The microkernel: `acc += A_panel (MR x kc) * B_panel (kc x NR)`, the A
/// panel row-major with row stride `lda` or, when `KM`, k-major (`a[k * MR
/// + r]`, `lda` unused).
///
/// ```text
///             b: NV vectors of LANES
///           +-------------------+
///  a[r*kc+k]| acc[r][0..NV]     |  r = 0 .. MR-1, one broadcast per row
///           +-------------------+
/// ```
///
/// # Safety
/// The CPU runs `S`; `a` holds `kc * MR` and `b` at least `kc * NR` floats.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd, const MR: usize, const NV: usize, const KM: bool>(
    kc: usize,
    lda: usize,
    a: &[f32],
    b: &[f32],
    acc: &mut [[S::V; NV]; MR],
) {
    let nr = NV * S::LANES;
    if KM {
        assert!(a.len() >= kc * MR && b.len() >= kc * nr);
    } else {
        assert!(lda >= kc && a.len() >= (MR - 1) * lda + kc && b.len() >= kc * nr);
    }
    // A row-major panel's rows are addressed as `base[r / 3] + (r % 3) *
    // lda`: one base pointer per three rows and the stride in a register,
    // so each broadcast is one x86 addressing mode (`[base + lda * s + disp]`,
    // s = 0, 4, 8 bytes) and the loop carries few pointers (a loop with one
    // pointer per row spent as many instructions on addresses as on FMAs).
    // A k-major panel needs one pointer, `base[0]`.
    const G: usize = 3;
    let mut base = [a.as_ptr(); MR];
    if !KM {
        for (g, p) in base.iter_mut().enumerate().take(MR.div_ceil(G)) {
            *p = a[g * G * lda..].as_ptr();
        }
    }
    let mut bp = b.as_ptr();
    /// One step of k: NV loads of B, MR broadcasts of A, MR * NV FMAs.
    ///
    /// # Safety
    /// Every row's element `u` steps ahead of `base` is in A and `u + 1`
    /// steps of B from `bp` are in B; S is present.
    #[inline(always)]
    unsafe fn step<S: Simd, const MR: usize, const NV: usize, const KM: bool>(
        u: usize,
        base: &[*const f32; MR],
        lda: usize,
        bp: *const f32,
        acc: &mut [[S::V; NV]; MR],
    ) {
        // SAFETY: the function's contract.
        unsafe {
            let mut bv = [S::zero(); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = S::load(bp.add((u * NV + v) * S::LANES));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let at = if KM { base[0].add(u * MR + r) } else { base[r / G].add((r % G) * lda + u) };
                let av = S::splat(*at);
                for (acc_v, &bv_v) in row.iter_mut().zip(&bv) {
                    *acc_v = S::fmadd(av, bv_v, *acc_v);
                }
            }
        }
    }
    // Unrolled by 4 along k; each accumulator still sums k in order.
    const U: usize = 4;
    // A pointer moves one column (row-major) or MR floats (k-major) a step.
    let (bases, ka) = if KM { (1, MR) } else { (MR.div_ceil(G), 1) };
    for _ in 0..kc / U {
        // SAFETY: U steps within the checked slices (see `step`).
        unsafe {
            for u in 0..U {
                step::<S, MR, NV, KM>(u, &base, lda, bp, acc);
            }
            for p in base.iter_mut().take(bases) {
                *p = p.add(U * ka);
            }
            bp = bp.add(U * nr);
        }
    }
    for _ in 0..kc % U {
        // SAFETY: one step within the checked slices (see `step`).
        unsafe {
            step::<S, MR, NV, KM>(0, &base, lda, bp, acc);
            for p in base.iter_mut().take(bases) {
                *p = p.add(ka);
            }
            bp = bp.add(nr);
        }
    }
}

/// A tile of C: element `(r, col)` at `c + r * rsc + col` for `r < rows`,
/// `col < cols`. Whoever builds one guarantees that these elements are
/// valid for reads and writes and that nothing else touches them while the
/// tile is in use (tiles of different tasks are disjoint).
struct Tile {
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
}

/// Loads the tile into accumulators (zeros where it sticks out of C).
///
/// # Safety
/// The CPU runs `S`; `t` upholds the [`Tile`] invariant.
#[inline(always)]
unsafe fn load_tile<S: Simd, const MR: usize, const NV: usize>(t: &Tile, acc: &mut [[S::V; NV]; MR]) {
    let nr = NV * S::LANES;
    if t.rows == MR && t.cols == nr {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: a full tile row holds NR = NV * LANES valid floats.
                *a = unsafe { S::load(t.c.add(r * t.rsc + v * S::LANES)) };
            }
        }
        return;
    }
    // Edge tile: through a zero-padded buffer.
    let mut buf = [0f32; MAX_TILE];
    for r in 0..t.rows {
        // SAFETY: row r holds t.cols valid floats (Tile invariant).
        let src = unsafe { std::slice::from_raw_parts(t.c.add(r * t.rsc), t.cols) };
        buf[r * nr..r * nr + t.cols].copy_from_slice(src);
    }
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, a) in row.iter_mut().enumerate() {
            // SAFETY: r * nr + v * LANES + LANES <= MR * NR <= MAX_TILE.
            *a = unsafe { S::load(buf.as_ptr().add(r * nr + v * S::LANES)) };
        }
    }
}

/// Stores accumulators into the tile, applying `acc + bias` first when
/// `bias` is given (`bias` holds NR floats, one per tile column), then ReLU
/// when its flag is set.
///
/// # Safety
/// The CPU runs `S`; `t` upholds the [`Tile`] invariant.
#[inline(always)]
unsafe fn store_tile<S: Simd, const MR: usize, const NV: usize>(
    t: &mut Tile,
    acc: &mut [[S::V; NV]; MR],
    bias: Option<(&[f32], bool)>,
) {
    let nr = NV * S::LANES;
    if let Some((bias, relu)) = bias {
        assert!(bias.len() >= nr);
        for v in 0..NV {
            // SAFETY: bias holds NR floats (checked above).
            let bv = unsafe { S::load(bias.as_ptr().add(v * S::LANES)) };
            for row in acc.iter_mut() {
                // SAFETY: S is present.
                row[v] = unsafe {
                    let z = S::add(row[v], bv);
                    if relu {
                        S::relu(z)
                    } else {
                        z
                    }
                };
            }
        }
    }
    if t.rows == MR && t.cols == nr {
        for (r, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                // SAFETY: a full tile row holds NR = NV * LANES valid floats.
                unsafe { S::store(t.c.add(r * t.rsc + v * S::LANES), a) };
            }
        }
        return;
    }
    // Edge tile: through a buffer, then only the valid part is copied out.
    let mut buf = [0f32; MAX_TILE];
    for (r, row) in acc.iter().enumerate() {
        for (v, &a) in row.iter().enumerate() {
            // SAFETY: r * nr + v * LANES + LANES <= MR * NR <= MAX_TILE.
            unsafe { S::store(buf.as_mut_ptr().add(r * nr + v * S::LANES), a) };
        }
    }
    for r in 0..t.rows {
        // SAFETY: row r holds t.cols valid floats, touched by no one else
        // (Tile invariant).
        let dst = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.rsc), t.cols) };
        dst.copy_from_slice(&buf[r * nr..r * nr + t.cols]);
    }
}

/// Packs `X[i0 .. i0+MR, pc .. pc+kc]` of layer 1's input, `X[i, k] =
/// x[rows[i], k] / 255`, into `dst` (`MR x kc`, row-major); rows at or past
/// `rows.len()` are zero. Each run of pixels is converted with vector
/// instructions, and `/ 255` is exact ([`Simd::div255`]), so every value is
/// bit-identical to the scalar reference's table.
///
/// # Safety
/// The CPU runs `S`; every `rows[i] * k + k <= x.len()`.
#[inline(always)]
unsafe fn pack_x_rows<S: Simd, const MR: usize>(
    dst: &mut [f32],
    x: &[u8],
    rows: &[u32],
    i0: usize,
    (pc, kc, k): (usize, usize, usize),
) {
    let l = S::LANES;
    let body = kc / l * l;
    for (r, out) in dst.chunks_exact_mut(kc).enumerate().take(MR) {
        let Some(&row) = rows.get(i0 + r) else {
            out.fill(0.0);
            continue;
        };
        let src = &x[row as usize * k + pc..row as usize * k + pc + kc];
        // SAFETY: every access covers LANES elements below `body <= kc` of
        // `src` and `out`; the CPU runs S (caller).
        unsafe {
            for j in (0..body).step_by(l) {
                S::store(out.as_mut_ptr().add(j), S::div255(S::load_u8(src.as_ptr().add(j))));
            }
        }
        for j in body..kc {
            out[j] = f32::from(src[j]) / 255.0;
        }
    }
}

/// Packs the consecutive micro-panels of `X^T` that fill `dst` (`MR * B`
/// floats each), the first starting at pixel `i0`, for the weight
/// gradient, k-major: element `(i, b)` of a panel starting at pixel `p0`
/// (pixel `p0 + i` of batch row `b`, `x[rows[b], p0 + i] / 255`) at
/// `b * MR + i`; pixels at or past `k` are zero. Each batch row's `MR`
/// contiguous bytes become `MR` contiguous floats, converted `LANES` at a
/// time where the row and the panel have room for whole vectors (a vector
/// that runs past `MR` writes into the next row's slot before that row is
/// written); `/ 255` is exact ([`Simd::div255`]), bit-identical to the
/// scalar reference's table. Batch rows are the outer loop, so each row's
/// pixels for all the panels are read together.
///
/// # Safety
/// The CPU runs `S`; `dst` holds whole panels; every `rows[b] * k + k <=
/// x.len()`.
#[inline(always)]
pub(crate) unsafe fn pack_xt<S: Simd, const MR: usize>(dst: &mut [f32], x: &[u8], rows: &[u32], i0: usize, k: usize) {
    let batch = rows.len();
    let size = MR * batch;
    assert!(size > 0 && dst.len().is_multiple_of(size));
    let l = S::LANES;
    // Whole vectors per row, reading at most `k - p0` bytes of it.
    let wide = MR.next_multiple_of(l);
    let lut = pixel_table();
    for (b, &row) in rows.iter().enumerate() {
        let image = &x[row as usize * k..row as usize * k + k];
        for (p, panel) in dst.chunks_exact_mut(size).enumerate() {
            let p0 = i0 + p * MR;
            let valid = MR.min(k.saturating_sub(p0));
            let out = &mut panel[b * MR..];
            if valid == MR && p0 + wide <= k && out.len() >= wide {
                // SAFETY: `image` holds `k - p0 >= wide` bytes from p0 on
                // and `out` at least `wide` floats; the CPU runs S (caller).
                unsafe {
                    for j in (0..wide).step_by(l) {
                        S::store(out.as_mut_ptr().add(j), S::div255(S::load_u8(image.as_ptr().add(p0 + j))));
                    }
                }
            } else {
                for (o, &px) in out[..valid].iter_mut().zip(&image[p0.min(k)..]) {
                    *o = lut[usize::from(px)];
                }
                out[valid..MR].fill(0.0);
            }
        }
    }
}

/// Packs the consecutive micro-panels of `A^T` that fill `dst` (`MR * B`
/// floats each), the first starting at column `i0` of a hidden layer's
/// input `A (B, K)`, for the dense weight gradient, k-major: element `(i,
/// b)` of a panel starting at column `p0`, `A[b, p0 + i]`, at `b * MR + i`
/// (each batch row's `MR` columns stay contiguous, so this is a copy of a
/// fixed size, a few moves rather than a `memcpy` call per row and panel);
/// columns at or past `k` are zero.
pub(crate) fn pack_at_kmajor<const MR: usize>(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize) {
    let size = MR * batch;
    assert!(size > 0 && k > 0 && dst.len().is_multiple_of(size) && a.len() >= batch * k);
    for (b, arow) in a.chunks_exact(k).enumerate().take(batch) {
        for (p, panel) in dst.chunks_exact_mut(size).enumerate() {
            let p0 = (i0 + p * MR).min(k);
            let out: &mut [f32; MR] = (&mut panel[b * MR..(b + 1) * MR]).try_into().expect("MR floats");
            match arow.get(p0..p0 + MR) {
                Some(src) => *out = src.try_into().expect("MR floats"),
                None => {
                    let valid = k - p0;
                    out[..valid].copy_from_slice(&arow[p0..]);
                    out[valid..].fill(0.0);
                }
            }
        }
    }
}

/// `dst[c * ldd + r] = src[r * lds + c]` for `r < rows`, `c < cols`: 8 x 8
/// blocks transposed in registers (a last partial block placed to end at
/// the edge, overlapping the one before it), the edges of a side shorter
/// than 8 element by element.
///
/// # Safety
/// The CPU runs `S`; `dst` is valid for writing every `c * ldd + r` above
/// and nothing else touches those elements meanwhile.
#[inline(always)]
unsafe fn transpose<S: Simd>(src: &[f32], lds: usize, dst: *mut f32, ldd: usize, (rows, cols): (usize, usize)) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= lds && src.len() >= (rows - 1) * lds + cols);
    if rows < 8 || cols < 8 {
        for r in 0..rows {
            for c in 0..cols {
                // SAFETY: r < rows, c < cols (caller).
                unsafe { *dst.add(c * ldd + r) = src[r * lds + c] };
            }
        }
        return;
    }
    // Block origins covering 0..len with 8-wide blocks (len >= 8).
    let starts = |len: usize| (0..len / 8).map(|t| t * 8).chain((!len.is_multiple_of(8)).then(|| len - 8));
    for r0 in starts(rows) {
        for c0 in starts(cols) {
            // SAFETY: rows r0 .. + 8 <= rows and columns c0 .. + 8 <= cols
            // of src (checked above) and the transposed block of dst
            // (caller); the CPU runs S (caller).
            unsafe { S::transpose8(src.as_ptr().add(r0 * lds + c0), lds, dst.add(c0 * ldd + r0), ldd) };
        }
    }
}

/// Packs the micro-panel of `A^T` that starts at column `i0` of a hidden
/// layer's input `A (B, K)`, row-major, for the sparse weight gradient's
/// column lists: element `(i, b)`, `A[b, i0 + i]`, at `dst[i * B + b]`;
/// columns at or past `k` are zero.
/// Copied as 8 x 8 block transposes ([`transpose`]).
///
/// # Safety
/// The CPU runs `S`; `dst` holds `MR * B` floats, `a` `B * k`; `i0 < k`.
#[inline(always)]
pub(crate) unsafe fn pack_at<S: Simd, const MR: usize>(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize) {
    assert!(dst.len() == MR * batch && a.len() >= batch * k && i0 < k);
    let valid = MR.min(k - i0);
    // SAFETY: dst[r * B + b] for r < valid <= MR, b < B is inside dst
    // (checked above); the CPU runs S (caller).
    unsafe { transpose::<S>(&a[i0..], k, dst.as_mut_ptr(), batch, (batch, valid)) };
    for r in valid..MR {
        dst[r * batch..(r + 1) * batch].fill(0.0);
    }
}

/// Panel `q` of `W^T (N, K)` in the panel layout, from `W (K, N)` in its
/// own (`NR` columns a panel), for a hidden layer's input gradient `dZ W^T`.
/// Block `p` of the result (its rows `p * NR ..`) is the transpose of the
/// contiguous `NR x NR` block of `W`'s panel `p` at rows `q * NR ..`, so
/// the copy is a sequence of in-cache block transposes ([`transpose`]);
/// columns past `K` are zero. (The sparse path's: the dense one reads `W`
/// as it is, [`input_grad_panels`].)
///
/// # Safety
/// The CPU runs `S`; `panel` holds `n * NR` floats and `w` `ceil(n / NR) *
/// k * NR`; `q * NR < k`.
#[inline(always)]
pub(crate) unsafe fn pack_wt<S: Simd, const NV: usize>(panel: &mut [f32], q: usize, w: &[f32], k: usize, n: usize) {
    let nr = NV * S::LANES;
    let panels = n.div_ceil(nr);
    assert!(panel.len() == n * nr && w.len() >= panels * k * nr && q * nr < k);
    let rows = nr.min(k - q * nr);
    if rows < nr {
        panel.fill(0.0);
    }
    for p in 0..panels {
        let cols = nr.min(n - p * nr);
        // src[c * NR + j] = W[q * NR + c, p * NR + j]; dst[j * NR + c] is
        // the same element of W^T.
        let src = &w[p * k * nr + q * nr * nr..][..rows * nr];
        let dst = &mut panel[p * nr * nr..][..cols * nr];
        // SAFETY: dst[j * NR + c] for j < cols, c < rows <= NR is inside
        // dst (cols * NR floats); the CPU runs S (caller).
        unsafe { transpose::<S>(src, nr, dst.as_mut_ptr(), nr, (rows, cols)) };
    }
}

/// Packs `dZ^T` for [`input_grad_panels`]: `dZ (B, N)` row-major becomes
/// `ceil(B / NR)` panels of `N x NR`, `dst[bp * N * NR + j * NR + c] =
/// dZ[bp * NR + c, j]`, samples past `B` zero: the B micro-panels of a
/// product whose columns are the batch's samples.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn pack_dzt<S: Simd, const NV: usize>(dst: &mut [f32], dz: &[f32], batch: usize, n: usize) {
    let nr = NV * S::LANES;
    assert!(dst.len() == batch.div_ceil(nr) * n * nr && dz.len() >= batch * n);
    for (bp, panel) in dst.chunks_exact_mut((n * nr).max(1)).enumerate() {
        let rows = nr.min(batch - bp * nr);
        if rows < nr {
            panel.fill(0.0);
        }
        // SAFETY: the panel holds N rows of NR floats, c * NR + r for c <
        // N and r < rows <= NR inside it; the CPU runs S (caller).
        unsafe { transpose::<S>(&dz[bp * nr * n..], n, panel.as_mut_ptr(), nr, (rows, n)) };
    }
}

/// A hidden layer's input gradient `dA = dZ W^T + 0` (the zero "bias" as
/// the forward product adds it) for its units `u0 .. u1` (columns of
/// `dA (B, K)`), without transposing `W`: the product runs as `dA^T = W
/// dZ^T`, whose A micro-panels are `W`'s own panel rows (`MR` units, row
/// stride `NR`, one panel of `NR` reduction steps at a time) and whose B
/// micro-panels are `dZ^T` ([`pack_dzt`]); each tile is copied into `dA`
/// transposed. Each element is one FMA chain over `j = 0 .. N-1`
/// from zero, as in [`forward_panels`] on `dZ` and `W^T` ([`pack_wt`]): the
/// same bits, without the transposed copy of `W`.
///
/// # Safety
/// The CPU runs `S`. `da` is valid for `B * K` floats and nothing else
/// touches its columns `u0 .. u1` meanwhile; `w` is `(K, N)` in panels of
/// `NR`, `dzt` as [`pack_dzt`] writes it (both checked).
#[inline(always)]
pub(crate) unsafe fn input_grad_panels<S: Simd, const MR: usize, const NV: usize>(
    da: *mut f32,
    (u0, u1): (usize, usize),
    w: &[f32],
    dzt: &[f32],
    (batch, k, n): (usize, usize, usize),
) {
    let nr = NV * S::LANES;
    let (bpanels, wpanels) = (batch.div_ceil(nr), n.div_ceil(nr));
    assert!(u0 <= u1 && u1 <= k && w.len() >= wpanels * k * nr && dzt.len() >= bpanels * n * nr);
    for i0 in (u0..u1).step_by(MR) {
        let rows = MR.min(u1 - i0);
        // A claim's last few units run on a 4-row tile rather than MR rows
        // of which most would be dropped.
        if rows <= 4 && MR > 4 {
            // SAFETY: forwarded contract, for units i0 .. i0 + rows.
            unsafe { input_grad_tiles::<S, 4, NV>(da, (i0, rows), w, dzt, (batch, k, n)) };
        } else {
            // SAFETY: as above.
            unsafe { input_grad_tiles::<S, MR, NV>(da, (i0, rows), w, dzt, (batch, k, n)) };
        }
    }
}

/// [`input_grad_panels`] for the units `i0 .. i0 + rows` (`rows <= MR`), every
/// sample.
///
/// # Safety
/// As [`input_grad_panels`]'s, for those units.
#[inline(always)]
unsafe fn input_grad_tiles<S: Simd, const MR: usize, const NV: usize>(
    da: *mut f32,
    (i0, rows): (usize, usize),
    w: &[f32],
    dzt: &[f32],
    (batch, k, n): (usize, usize, usize),
) {
    let nr = NV * S::LANES;
    let (bpanels, wpanels) = (batch.div_ceil(nr), n.div_ceil(nr));
    let zero = [0f32; MAX_TILE];
    // The A micro-panel of panel p is W's rows i0 .. i0 + MR at `at(p)`
    // (row stride NR); the units past K of the last one come from a
    // zero-padded copy (the rows past `rows` are computed and dropped).
    let padded: Option<Vec<f32>> = (i0 + MR > k).then(|| {
        let mut e = vec![0.0; wpanels * MR * nr];
        for (p, ep) in e.chunks_exact_mut(MR * nr).enumerate() {
            ep[..(k - i0) * nr].copy_from_slice(&w[p * k * nr + i0 * nr..(p + 1) * k * nr]);
        }
        e
    });
    let at = |p: usize| match &padded {
        Some(e) => &e[p * MR * nr..],
        None => &w[p * k * nr + i0 * nr..],
    };
    for bp in 0..bpanels {
        // SAFETY: the CPU runs S (caller).
        let mut acc = unsafe { [[S::zero(); NV]; MR] };
        for p in 0..wpanels {
            let kc = nr.min(n - p * nr);
            let b = &dzt[bp * n * nr + p * nr * nr..][..kc * nr];
            // SAFETY: the CPU runs S (caller); `at(p)` holds MR rows of
            // stride NR (rows below K, or the padded copy), `b` kc x NR.
            unsafe { microkernel::<S, MR, NV, false>(kc, nr, at(p), b, &mut acc) };
        }
        // The tile (units x samples) goes out transposed, while in L1;
        // + 0 as the forward adds its bias (a -0 that flushing a
        // negative subnormal to zero leaves becomes +0, as there).
        let mut buf = [0f32; MAX_TILE];
        let mut tile = Tile { c: buf.as_mut_ptr(), rsc: nr, rows: MR, cols: nr };
        // SAFETY: the CPU runs S (caller); buf holds MR x NR <= MAX_TILE.
        unsafe { store_tile::<S, MR, NV>(&mut tile, &mut acc, Some((&zero[..nr], false))) };
        let samples = nr.min(batch - bp * nr);
        // SAFETY: dA's rows bp * NR .. + samples < B at columns i0 .. +
        // rows (caller); the CPU runs S.
        unsafe { transpose::<S>(&buf, nr, da.add(bp * nr * k + i0), k, (rows, samples)) };
    }
}

/// `pixel / 255` rounded once to f32, for every pixel value (the table
/// every backend uses).
fn pixel_table() -> [f32; 256] {
    crate::shared::pixel_table::<f32>()
}

/// `H[:, panels jp0..jp1] := X W + b`, then ReLU when `relu` (see the
/// module docs): one task's share of columns, for every row. `h` points at
/// the whole `(m, n)` row-major output; `w` is `(K, N)` in panels of `NR`;
/// `bias` is padded to a whole number of panels.
///
/// # Safety
/// The CPU runs `S`. `h` is valid for `m * n` floats and, while this runs,
/// nothing else touches columns `jp0 * NR .. min(jp1 * NR, n)` of it.
/// Shapes are checked by the caller: `x` holds every row of `X` (see
/// [`Lhs::pack`]), `w` holds `panels * k * NR` and `bias` `panels * NR`
/// floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn forward_panels<S: Simd, const MR: usize, const NV: usize>(
    h: *mut f32,
    (jp0, jp1): (usize, usize),
    x: Lhs<'_>,
    w: &[f32],
    bias: &[f32],
    (k, n, relu): (usize, usize, bool),
    apack: &mut Vec<f32>,
) {
    let nr = NV * S::LANES;
    let m = x.rows();
    let blocks: Vec<(usize, usize)> = k_blocks(k).collect();
    if blocks.is_empty() {
        // K = 0: the product is zero and only the epilogue remains.
        let cols = jp0 * nr..(jp1 * nr).min(n);
        for r in 0..m {
            for (c, &b) in bias.iter().enumerate().take(cols.end).skip(cols.start) {
                // SAFETY: (r, c) is inside H and in this task's columns.
                unsafe { *h.add(r * n + c) = if relu && b < 0.0 { 0.0 } else { b } };
            }
        }
        return;
    }
    // LOOP 4: k-blocks, in order, so each element is one FMA chain.
    for (bi, &(pc, kc)) in blocks.iter().enumerate() {
        let (first, last) = (bi == 0, bi + 1 == blocks.len());
        // LOOP 3: blocks of MC rows of A, packed (gathered and converted).
        let mc_max = blocking().mc;
        for ic in (0..m).step_by(mc_max) {
            let mc = mc_max.min(m - ic);
            let apanels = mc.div_ceil(MR);
            let apack = window(apack, apanels * kc * MR, false);
            for (p, dst) in apack.chunks_exact_mut(kc * MR).enumerate() {
                // SAFETY: the CPU runs S; shapes checked by the caller.
                unsafe { x.pack::<S, MR>(dst, ic + p * MR, (pc, kc, k)) };
            }
            // LOOP 2: this task's panels of NR columns of W (already packed).
            for jp in jp0..jp1 {
                let b = &w[jp * k * nr + pc * nr..jp * k * nr + (pc + kc) * nr];
                let cols = nr.min(n - jp * nr);
                // LOOP 1: MR-row micro-panels of A against this B panel.
                for (ip, a) in apack.chunks_exact(kc * MR).enumerate() {
                    let r0 = ic + ip * MR;
                    // SAFETY: the tile's rows r0.. and columns jp * NR ..
                    // + cols are inside H and this task's own (caller).
                    let mut tile = Tile { c: unsafe { h.add(r0 * n + jp * nr) }, rsc: n, rows: MR.min(m - r0), cols };
                    // SAFETY: the CPU runs S (caller); panel lengths are
                    // kc * MR and kc * NR by construction; tile as above.
                    unsafe {
                        let mut acc = [[S::zero(); NV]; MR];
                        if !first {
                            load_tile::<S, MR, NV>(&tile, &mut acc);
                        }
                        microkernel::<S, MR, NV, false>(kc, kc, a, b, &mut acc);
                        let epilogue = last.then(|| (&bias[jp * nr..(jp + 1) * nr], relu));
                        store_tile::<S, MR, NV>(&mut tile, &mut acc, epilogue);
                    }
                }
            }
        }
    }
}

/// `dW := X^T dZ` for the panels `jp0 .. jp0 + dw.len() / (k * NR)` of a
/// `(K, N)` gradient in panels of `NR` (see the module docs); here `K` is
/// the layer's input width and the reduction runs over the batch. `xt` is
/// the whole `X^T` packed once (by [`pack_xt`] or [`pack_at_kmajor`]) and
/// shared by every task: `ceil(K / MR)` k-major micro-panels of `MR x B`
/// (`B x MR` floats). With `update`, each
/// finished gradient tile instead updates `W` and the optimizer's state in
/// place (bit-identical to storing `dW` and updating afterwards); `dw` then only
/// holds partial sums between k-blocks and its final content is unspecified.
///
/// # Safety
/// The CPU runs `S`. Shapes are checked by the caller: `dw` holds whole
/// panels of `k * NR` floats, `dz` is `(B, n)`, `xt` holds
/// `ceil(k / MR) * MR * B` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weight_grad_panels<S: Simd, const MR: usize, const NV: usize, R: LaneRule<S>>(
    dw: &mut [f32],
    jp0: usize,
    xt: &[f32],
    dz: &[f32],
    batch: usize,
    k: usize,
    n: usize,
    bpack: &mut Vec<f32>,
    update: Option<(Update<'_, f32>, R)>,
) {
    let nr = NV * S::LANES;
    let panels = dw.len() / (k * nr).max(1);
    let (mut update, coeffs) = match update {
        Some((u, r)) => (Some(u), Some(r)),
        None => (None, None),
    };
    if let Some(u) = &update {
        assert!(u.len() == dw.len(), "W must match dW");
    }
    assert!(xt.len() >= k.div_ceil(MR) * MR * batch && dz.len() >= batch * n);
    if batch == 0 {
        dw.fill(0.0);
        if let Some(u) = update {
            // SAFETY: the CPU runs S (caller); the gradient is all zeros.
            unsafe { crate::optim::update::<S>(u, dw) };
        }
        return;
    }
    let blocks: Vec<(usize, usize)> = k_blocks(batch).collect();
    // The fused update's pointers, taken once (the tiles' are offsets).
    let base = update.as_mut().map(|u| u.ptrs());
    // A finished tile's gradient waits here (`pending`: its offset in the
    // panels and its rows) while the next tile's products run: its update
    // is applied a few vectors at a time between segments of them, so
    // that the divider's square roots and divisions overlap the FMAs
    // instead of stalling between tiles. Each element's update is the same
    // either way, and no tile reads another's weights or state.
    let mut pending_grad = [0f32; MAX_TILE];
    let mut pending: Option<(usize, usize)> = None;
    // LOOP 4: k-blocks of the batch, in order.
    for (bi, &(pc, kc)) in blocks.iter().enumerate() {
        let (first, last) = (bi == 0, bi + 1 == blocks.len());
        // Pack this k-block of dZ's columns for our panels (zero past N).
        let bpack = window(bpack, panels * kc * nr, false);
        for (p, dst) in bpack.chunks_exact_mut(kc * nr).enumerate() {
            let c0 = (jp0 + p) * nr;
            let valid = nr.min(n.saturating_sub(c0));
            for kk in 0..kc {
                let out = &mut dst[kk * nr..(kk + 1) * nr];
                let src = &dz[(pc + kk) * n + c0..(pc + kk) * n + c0 + valid];
                if valid == nr {
                    // A whole panel row: NV vector moves, not a `memcpy`
                    // call per row.
                    for v in 0..NV {
                        // SAFETY: `src` and `out` hold NR = NV * LANES
                        // floats; the CPU runs S (caller).
                        unsafe {
                            S::store(out.as_mut_ptr().add(v * S::LANES), S::load(src.as_ptr().add(v * S::LANES)))
                        };
                    }
                } else {
                    out[..valid].copy_from_slice(src);
                    out[valid..].fill(0.0);
                }
            }
        }
        // LOOP 3: blocks of MC pixels (rows of dW).
        let mc_max = blocking().mc;
        for ic in (0..k).step_by(mc_max) {
            let apanels = mc_max.min(k - ic).div_ceil(MR);
            // LOOP 2: our panels of dZ / dW.
            for (p, b) in bpack.chunks_exact(kc * nr).enumerate() {
                // LOOP 1: MR-pixel micro-panels.
                for ip in ic / MR..ic / MR + apanels {
                    let r0 = ip * MR;
                    let rows_here = MR.min(k - r0);
                    let a = &xt[ip * MR * batch + pc * MR..ip * MR * batch + (pc + kc) * MR];
                    let off = p * k * nr + r0 * nr;
                    let end = off + rows_here * nr;
                    let mut tile = Tile { c: dw[off..end].as_mut_ptr(), rsc: nr, rows: rows_here, cols: nr };
                    // SAFETY: the CPU runs S (caller); `a` holds MR rows of
                    // stride B from column pc on, `b` kc x NR floats; the
                    // W and state tiles are the same rows_here x NR as dW's.
                    unsafe {
                        let mut acc = [[S::zero(); NV]; MR];
                        if !first {
                            load_tile::<S, MR, NV>(&tile, &mut acc);
                        }
                        match (base, coeffs) {
                            (Some(base), Some(c)) if last => {
                                // The products in SEGMENTS runs of k (each
                                // element still one chain over k, in order),
                                // the pending tile's update spread between
                                // them.
                                const SEGMENTS: usize = 4;
                                let seg = kc.div_ceil(SEGMENTS).max(1);
                                let vectors = pending.map_or(0, |(_, rows)| rows * NV);
                                let per = vectors.div_ceil(kc.div_ceil(seg));
                                let mut v = 0;
                                for s0 in (0..kc).step_by(seg) {
                                    let len = seg.min(kc - s0);
                                    microkernel::<S, MR, NV, true>(len, batch, &a[s0 * MR..], &b[s0 * nr..], &mut acc);
                                    if let Some((at, _)) = pending {
                                        for u in v..(v + per).min(vectors) {
                                            let e = u / NV * nr + u % NV * S::LANES;
                                            c.apply(base.at(at + e), S::load(pending_grad.as_ptr().add(e)));
                                        }
                                        v = (v + per).min(vectors);
                                    }
                                }
                                // The tile goes through a buffer: the update
                                // loop is too long to unroll, and indexing
                                // the accumulators from it made the compiler
                                // store every one of them after each of the
                                // microkernel's FMAs (AVX-512).
                                let mut gt = Tile { c: pending_grad.as_mut_ptr(), rsc: nr, rows: MR, cols: nr };
                                store_tile::<S, MR, NV>(&mut gt, &mut acc, None);
                                pending = Some((off, rows_here));
                            }
                            _ => {
                                microkernel::<S, MR, NV, true>(kc, batch, a, b, &mut acc);
                                store_tile::<S, MR, NV>(&mut tile, &mut acc, None)
                            }
                        }
                    }
                }
            }
        }
    }
    // The last tile's update. (The loop is written out here and above:
    // shared as a closure, it made the compiler spill the accumulators
    // around the segments, 1.17 ms a call instead of 0.29.)
    if let (Some((at, rows)), Some(base), Some(c)) = (pending, base, coeffs) {
        for u in 0..rows * NV {
            let e = u / NV * nr + u % NV * S::LANES;
            // SAFETY: the CPU runs S (caller); `at + e` is a vector of the
            // last tile's rows in W and the state (as above).
            unsafe { c.apply(base.at(at + e), S::load(pending_grad.as_ptr().add(e))) };
        }
    }
}
