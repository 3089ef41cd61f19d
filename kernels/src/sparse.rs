//! Products that skip zeros, exactly: layer 1's zero pixels, and a hidden
//! layer's zero inputs (a ReLU's outputs) or zero output gradients.
//!
//! 81% of MNIST's pixels are 0, and a zero pixel contributes nothing to
//! `X W1` nor to `dW1 = X^T dH`. These bodies visit only the non-zero
//! entries, in ascending order, so every output element is the very FMA chain
//! the dense packed GEMM (`gemm.rs`) computes minus its `fma(0, w, acc)`
//! links, which leave `acc` unchanged (it starts at `+0` and never becomes
//! `-0`): results are **bit-identical** to the dense path of the same
//! instruction set. The same holds for f32 inputs with zeros of either sign.
//!
//! * [`Csr`] (for the forward): each sample's non-zero entries, and [`Csc`]
//!   (for the weight gradient): each input column's samples, built per call
//!   from the mapped u8 rows (the data stays zero-copy) or from f32 rows.
//!   Below 4 threads every task of a call builds the whole list itself, on
//!   its own core: with 2 threads that cost less than splitting the build,
//!   waiting for both halves and then reading the other core's half from
//!   its cache (measured: docs/performance-log.md). From 4 threads on the
//!   input layer's lists are built once, in parallel (`build_par`), so that
//!   the build does not stop the layer scaling.
//! * `forward_sparse`: per sample, one axpy of a `W` row per non-zero entry
//!   into `PG` panels' accumulators at once (independent FMA chains).
//! * `weight_grad_sparse`: per input column, one axpy of a `dZ` row per
//!   sample in which it is non-zero; a column zero in the whole batch has a
//!   zero gradient row, which (fused with RMSprop) only decays its velocity.

use crate::optim::LaneRule;
use crate::simd::for_each_nonzero;
use crate::simd::{Lister, Simd};

/// Panels (of `NR` columns) accumulated together: `PG * NV` independent FMA
/// chains hide the FMA latency.
pub(crate) const PG: usize = 4;

// Bytes of one sample's `dZ` slice in a group of `dW1` panels
// (`Blocking::grad_group_bytes`, from the L1d: 256 on a 32 KiB L1): the
// group's `dZ` block (copied contiguous) then fills L1 at batch 128 and
// stays there while every pixel's samples hit it at random. That is 2
// panels on AVX-512 (4 zmm chains), 4 on AVX2 (8 ymm chains) at 32 KiB; the
// other group sizes measured slower there (docs/performance-log.md).

/// Makes `v` at least `len` long. The lists' buffers are shared by layers
/// of different widths, one after the other: shrinking them would make the
/// next wider layer clear its whole buffer again.
fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Lists the non-zero pixels of one image row: [`csr_row`] for one ISA,
/// or a whole-row lister ([`crate::simd::Simd::wide_row_lister`]).
pub(crate) type CsrRow = fn(&[u8], &mut [u32], &mut [f32]) -> usize;

/// How this CPU lists a batch's pixels, chosen once, when its backend is
/// selected (the sub-features it needs are detected then, never in the
/// hot code).
#[derive(Clone, Copy)]
pub(crate) struct PixelListing {
    /// Lists one image row, or one pixel's row of samples.
    pub(crate) row: CsrRow,
    /// How [`Csc::build`] lists the batch by pixel.
    pub(crate) lister: Lister,
    /// The batch is transposed 64 pixels a step (AVX-512 BW), else 8.
    wide_transpose: bool,
}

impl PixelListing {
    /// `row` and `lister`, with the 64-pixel transpose when `wide` is
    /// asked for and this CPU has AVX-512 BW.
    pub(crate) fn new(row: CsrRow, lister: Lister, wide: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        let wide = wide && is_x86_feature_detected!("avx512bw");
        // No 64-pixel step elsewhere.
        #[cfg(not(target_arch = "x86_64"))]
        let wide = {
            let _ = wide;
            false
        };
        PixelListing { row, lister, wide_transpose: wide }
    }
}

/// Lists the non-zero values of one f32 row (a hidden layer's input, or
/// an output gradient): [`csr_row_f32`] for one ISA.
pub(crate) type CsrRowF32 = fn(&[f32], &mut [u32], &mut [f32]) -> usize;

/// The non-zero pixels of a batch, by sample and by pixel.
#[derive(Default)]
pub(crate) struct Csr {
    /// Pixels per image (`K`).
    k: usize,
    /// Non-zero count of sample `i`; its entries are at `i * k ..`.
    count: Vec<u32>,
    /// Pixel index of each entry (`i * k + j` for the `j`-th non-zero of `i`).
    idx: Vec<u32>,
    /// `pixel / 255` of each entry.
    val: Vec<f32>,
}

impl Csr {
    /// Scans the rows of a batch, each with `row`, one of the [`csr_row`]
    /// entry points, on the calling thread. This is the step's first pass
    /// over the batch, so it first asks for all its rows at once: the scan,
    /// row after row, would otherwise wait on each.
    pub(crate) fn build(&mut self, x: &[u8], rows: &[u32], k: usize, row: CsrRow) {
        crate::prefetch::prefetch_rows(x, rows, k);
        self.reset(rows.len(), k);
        self.fill(|i, idx, val| row(&x[rows[i] as usize * k..][..k], idx, val));
    }

    /// As [`Csr::build`], with the rows listed in parallel (`par::run`, a
    /// block of rows a task), each sample's list in its own slots; the
    /// result is the same.
    pub(crate) fn build_par(&mut self, x: &[u8], rows: &[u32], k: usize, row: CsrRow) {
        const ROWS: usize = 16;
        crate::prefetch::prefetch_rows(x, rows, k);
        self.reset(rows.len(), k);
        let k1 = k.max(1);
        let blocks = self
            .count
            .chunks_mut(ROWS)
            .zip(self.idx.chunks_mut(ROWS * k1))
            .zip(self.val.chunks_mut(ROWS * k1))
            .zip(rows.chunks(ROWS));
        crate::par::run(blocks.collect(), |(((count, idx), val), rows)| {
            for (((c, idx), val), &r) in count.iter_mut().zip(idx.chunks_mut(k1)).zip(val.chunks_mut(k1)).zip(rows) {
                *c = row(&x[r as usize * k..][..k], idx, val) as u32;
            }
        });
    }

    /// As [`Csr::build`] for the `m` rows of `a` (`(m, k)` row-major), with
    /// `row`, one of the [`csr_row_f32`] entry points.
    pub(crate) fn build_f32(&mut self, a: &[f32], m: usize, k: usize, row: CsrRowF32) {
        assert!(a.len() >= m * k);
        self.reset(m, k);
        self.fill(|i, idx, val| row(&a[i * k..][..k], idx, val));
    }

    /// Room for `m` samples of up to `k` entries each, every count zero.
    fn reset(&mut self, m: usize, k: usize) {
        self.k = k;
        self.count.clear();
        self.count.resize(m, 0);
        grow(&mut self.idx, m * k);
        grow(&mut self.val, m * k);
    }

    /// Sample `i`'s count from `list(i, its index slots, its value slots)`,
    /// for every sample in turn.
    fn fill(&mut self, mut list: impl FnMut(usize, &mut [u32], &mut [f32]) -> usize) {
        let k1 = self.k.max(1);
        let slots = self.idx.chunks_mut(k1).zip(self.val.chunks_mut(k1));
        for (i, (count, (idx, val))) in self.count.iter_mut().zip(slots).enumerate() {
            *count = list(i, idx, val) as u32;
        }
    }

    /// Samples in the batch.
    pub(crate) fn samples(&self) -> usize {
        self.count.len()
    }

    /// Total non-zero pixels.
    pub(crate) fn nonzeros(&self) -> usize {
        self.count.iter().map(|&c| c as usize).sum()
    }

    /// Sample `i`'s (pixel, value) entries, ascending by pixel.
    fn sample(&self, i: usize) -> (&[u32], &[f32]) {
        let (s, c) = (i * self.k, self.count[i] as usize);
        (&self.idx[s..s + c], &self.val[s..s + c])
    }
}

/// The non-zero pixels of one image row `src`, ascending: pixel indices to
/// `idx` and `pixel / 255` to `val` (each at least `src.len()` long); returns
/// how many. A vector at a time ([`Simd::nonzero_lanes`]).
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn csr_row<S: Simd>(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize {
    let lut = crate::shared::pixel_table::<f32>();
    let (k, l) = (src.len(), S::LANES);
    assert!(idx.len() >= k && val.len() >= k && k <= u32::MAX as usize);
    let body = k / l * l;
    let mut c = 0;
    for j in (0..body).step_by(l) {
        // SAFETY: bytes j .. j + LANES <= body are inside src; c <= j, so
        // slots c .. c + LANES <= body are inside idx and val; the CPU runs
        // S (caller).
        c += unsafe {
            S::nonzero_lanes(src.as_ptr().add(j), j as u32, idx.as_mut_ptr().add(c), val.as_mut_ptr().add(c), &lut)
        };
    }
    for_each_nonzero(&src[body..], |j, p| {
        idx[c] = (body + j) as u32;
        val[c] = lut[usize::from(p)];
        c += 1;
    });
    c
}

/// The non-zero values of one f32 row `src`, ascending, as [`csr_row`]
/// lists pixels (indices to `idx`, values to `val`); returns how many.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn csr_row_f32<S: Simd>(src: &[f32], idx: &mut [u32], val: &mut [f32]) -> usize {
    let (k, l) = (src.len(), S::LANES);
    assert!(idx.len() >= k && val.len() >= k && k <= u32::MAX as usize);
    let body = k / l * l;
    let mut c = 0;
    for j in (0..body).step_by(l) {
        // SAFETY: floats j .. j + LANES <= body are inside src; c <= j, so
        // slots c .. c + LANES <= body are inside idx and val; the CPU runs
        // S (caller).
        c += unsafe {
            S::nonzero_f32_lanes(src.as_ptr().add(j), j as u32, idx.as_mut_ptr().add(c), val.as_mut_ptr().add(c))
        };
    }
    for (j, &v) in src.iter().enumerate().skip(body) {
        if v != 0.0 {
            idx[c] = j as u32;
            val[c] = v;
            c += 1;
        }
    }
    c
}

/// `t[(j - js.start) * B + i] = x[rows[i] * k + j]` for the pixels `js`
/// (`js.start` a multiple of 8) of the batch's `B` rows of `k` bytes:
/// pixel-major. With AVX-512 BW, 8 samples x 64 pixels a step by unpacks
/// in registers (`simd::transpose_8x64_bytes`); otherwise 8 x 8 blocks in
/// eight 64-bit words by three rounds of masked swaps (2 x 2 blocks of
/// bytes, then of byte pairs, then of 4-byte halves); the edges that do not
/// fill a block are copied byte by byte. Blocks of 64 pixels go outermost,
/// so that their lines of `t` stay in L1 while every sample is written.
/// 64 pixels a step where `how` says this CPU can (AVX-512 BW), else 8.
fn transpose_pixels(t: &mut [u8], x: &[u8], rows: &[u32], k: usize, js: std::ops::Range<usize>, how: PixelListing) {
    let b = rows.len();
    let (j0, j1) = (js.start, js.end);
    assert!(t.len() == (j1 - j0) * b && j0.is_multiple_of(8) && j0 <= j1 && j1 <= k);
    let (b8, j8) = (b / 8 * 8, j0 + (j1 - j0) / 8 * 8);
    let wide = how.wide_transpose;
    let j64 = if wide { j0 + (j1 - j0) / 64 * 64 } else { j0 };
    let row = |i: usize| &x[rows[i] as usize * k..][..k];
    // Pixels outer, samples inner: a block's lines of `t` (64 pixels x B
    // samples, 8 KiB for MNIST) stay in L1 until every sample is in them
    // (samples outer, each pass wrote 8 bytes into each of 784 lines, more
    // than L1 holds, and fetched every line again 16 times).
    #[cfg(target_arch = "x86_64")]
    for jb in (j0..j64).step_by(64) {
        for i0 in (0..b8).step_by(8) {
            assert!(jb + 64 <= k && (jb - j0 + 63) * b + i0 + 8 <= t.len());
            // SAFETY: AVX-512 BW was detected (`PixelListing::new`); each row has pixels jb ..
            // jb + 64 and `t` the 8 slots of samples i0 .. i0 + 8 of each
            // of those pixels (asserted).
            unsafe {
                crate::simd::transpose_8x64_bytes(
                    std::array::from_fn(|r| row(i0 + r)[jb..].as_ptr()),
                    t[(jb - j0) * b + i0..].as_mut_ptr(),
                    b,
                )
            };
        }
    }
    for jc in (j64..j8).step_by(64) {
        for i0 in (0..b8).step_by(8) {
            let src: [&[u8]; 8] = std::array::from_fn(|r| row(i0 + r));
            for jb in (jc..(jc + 64).min(j8)).step_by(8) {
                let mut w: [u64; 8] =
                    std::array::from_fn(|r| u64::from_le_bytes(src[r][jb..jb + 8].try_into().expect("8")));
                if w.iter().any(|&v| v != 0) {
                    for (shift, mask, stride) in [
                        (8, 0x00ff_00ff_00ff_00ffu64, 1),
                        (16, 0x0000_ffff_0000_ffff, 2),
                        (32, 0x0000_0000_ffff_ffff, 4),
                    ] {
                        for r in (0..8).filter(|r| r & stride == 0) {
                            let d = ((w[r] >> shift) ^ w[r + stride]) & mask;
                            w[r + stride] ^= d;
                            w[r] ^= d << shift;
                        }
                    }
                }
                for (c, v) in w.iter().enumerate() {
                    t[(jb - j0 + c) * b + i0..][..8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    for i0 in (0..b8).step_by(8) {
        let src: [&[u8]; 8] = std::array::from_fn(|r| row(i0 + r));
        for j in j8..j1 {
            for (r, s) in src.iter().enumerate() {
                t[(j - j0) * b + i0 + r] = s[j];
            }
        }
    }
    for (i, &r) in rows.iter().enumerate().skip(b8) {
        for (j, &p) in x[r as usize * k..][j0..j1].iter().enumerate() {
            t[j * b + i] = p;
        }
    }
}

/// The non-zero pixels of a batch by pixel: pixel `j`'s `(sample, value)`
/// entries, ascending by sample, are the first `count[j]` of its `B` slots
/// at `j * B`.
#[derive(Default)]
pub(crate) struct Csc {
    /// Samples in the batch (`B`, the slots per pixel).
    samples: usize,
    count: Vec<u32>,
    sample: Vec<u32>,
    val: Vec<f32>,
    /// One row's list while it is filed (kept between calls).
    row_idx: Vec<u32>,
    row_val: Vec<f32>,
    /// Rows of `a^T` while they are listed ([`Csc::build_f32`]).
    at: Vec<f32>,
    /// The batch's bytes, pixel-major, while they are listed.
    bytes: Vec<u8>,
}

impl Csc {
    /// Lists the batch's non-zero pixels by pixel, on the calling thread,
    /// in the way that measured fastest for how `row` (one of the
    /// [`csr_row`] entry points) packs (docs/performance-log.md):
    ///
    /// * [`Lister::Compress`]: each image row is listed with `row`, and
    ///   the list filed under its pixels;
    /// * [`Lister::Table`]: the batch is transposed (pixel-major bytes, 8 x
    ///   8 blocks in 64-bit words) and each pixel's row of samples listed
    ///   with `row` straight into its slots: no filing, whose
    ///   read-modify-write of a pixel's count and scattered stores
    ///   dominated on Zen 3;
    /// * [`Lister::WordScan`]: the entries are filed straight from a scan
    ///   of the bytes (listing first would only add a pass).
    pub(crate) fn build(&mut self, x: &[u8], rows: &[u32], k: usize, how: PixelListing) {
        let PixelListing { row, lister, .. } = how;
        let lut = crate::shared::pixel_table::<f32>();
        let b = rows.len();
        self.samples = b;
        self.count.clear();
        self.count.resize(k, 0);
        grow(&mut self.sample, k * b);
        grow(&mut self.val, k * b);
        if lister == Lister::Table {
            // The transpose reads 8 rows a step across all of the batch's
            // rows, too many streams for the hardware prefetchers: so it
            // first asks for all of them at once, as `Csr::build` does.
            crate::prefetch::prefetch_rows(x, rows, k);
            grow(&mut self.bytes, k * b);
            let slots = (&mut self.count[..], &mut self.sample[..k * b], &mut self.val[..k * b]);
            list_pixels(slots, &mut self.bytes[..k * b], (x, rows, k), 0..k, how);
            return;
        }
        grow(&mut self.row_idx, k);
        grow(&mut self.row_val, k);
        let (count, sample, val) = (&mut self.count, &mut self.sample, &mut self.val);
        let (idx, v) = (&mut self.row_idx, &mut self.row_val);
        let mut file = |j: usize, i: usize, xv: f32| {
            let at = j * b + count[j] as usize;
            sample[at] = i as u32;
            val[at] = xv;
            count[j] += 1;
        };
        for (i, &r) in rows.iter().enumerate() {
            let src = &x[r as usize * k..][..k];
            if lister == Lister::Compress {
                let c = row(src, idx, v);
                for (&j, &xv) in idx[..c].iter().zip(&v[..c]) {
                    file(j as usize, i, xv);
                }
            } else {
                for_each_nonzero(src, |j, p| file(j, i, lut[usize::from(p)]));
            }
        }
    }

    /// As [`Csc::build`] with [`Lister::Table`], in parallel (`par::run`,
    /// a block of pixels a task, each transposing and listing its own
    /// pixels); the lists are the same.
    pub(crate) fn build_par(&mut self, x: &[u8], rows: &[u32], k: usize, how: PixelListing) {
        // A multiple of 8 (the transpose's blocks): 13 blocks for MNIST.
        const PIXELS: usize = 64;
        let b = rows.len();
        self.samples = b;
        self.count.clear();
        self.count.resize(k, 0);
        if b == 0 || k == 0 {
            return;
        }
        crate::prefetch::prefetch_rows(x, rows, k);
        grow(&mut self.sample, k * b);
        grow(&mut self.val, k * b);
        grow(&mut self.bytes, k * b);
        let blocks = self
            .count
            .chunks_mut(PIXELS)
            .zip(self.sample[..k * b].chunks_mut(PIXELS * b))
            .zip(self.val[..k * b].chunks_mut(PIXELS * b))
            .zip(self.bytes[..k * b].chunks_mut(PIXELS * b))
            .enumerate();
        crate::par::run(blocks.collect(), |(q, (((count, sample), val), bytes))| {
            let js = q * PIXELS..(q * PIXELS + count.len());
            list_pixels((count, sample, val), bytes, (x, rows, k), js, how);
        });
    }

    /// As [`Csc::build`] for the `m` rows of `a` (`(m, k)` row-major):
    /// `pack(dst, j0)` first writes rows `j0 .. j0 + mr` of `a^T` (columns
    /// of `a`, zero past `k`) into `dst` (`mr x m`), then `row`, one of the
    /// [`csr_row_f32`] entry points, lists each of those rows in place:
    /// column `j`'s non-zeros are row `j` of `a^T`'s, ascending by sample.
    /// (Filing each row's list under its columns instead costs a
    /// read-modify-write of a column's count per non-zero, in random order.)
    pub(crate) fn build_f32(
        &mut self,
        (m, k, mr): (usize, usize, usize),
        pack: impl Fn(&mut [f32], usize),
        row: CsrRowF32,
    ) {
        self.samples = m;
        self.count.clear();
        self.count.resize(k, 0);
        grow(&mut self.sample, k * m);
        grow(&mut self.val, k * m);
        if m == 0 {
            return;
        }
        let panel = mr * m;
        grow(&mut self.at, panel);
        let at = &mut self.at[..panel];
        for j0 in (0..k).step_by(mr) {
            pack(at, j0);
            for (r, at) in at.chunks_exact(m).take(mr.min(k - j0)).enumerate() {
                let j = j0 + r;
                self.count[j] = row(at, &mut self.sample[j * m..(j + 1) * m], &mut self.val[j * m..(j + 1) * m]) as u32;
            }
        }
    }

    /// Total non-zero pixels.
    pub(crate) fn nonzeros(&self) -> usize {
        self.count.iter().map(|&c| c as usize).sum()
    }

    /// Pixel `j`'s (sample, value) entries, ascending by sample.
    pub(crate) fn pixel(&self, j: usize) -> (&[u32], &[f32]) {
        let (s, c) = (j * self.samples, self.count[j] as usize);
        (&self.sample[s..s + c], &self.val[s..s + c])
    }
}

/// Lists pixels `js` of a batch by pixel into their slots (`count`,
/// `sample` and `val` from pixel `js.start` on): transposes them into `t`
/// and lists each pixel's row of samples with `row`.
fn list_pixels(
    (count, sample, val): (&mut [u32], &mut [u32], &mut [f32]),
    t: &mut [u8],
    (x, rows, k): (&[u8], &[u32], usize),
    js: std::ops::Range<usize>,
    how: PixelListing,
) {
    let b = rows.len();
    let row = how.row;
    transpose_pixels(t, x, rows, k, js, how);
    for (j, col) in t.chunks_exact(b.max(1)).enumerate().take(count.len()) {
        // A pixel dark in the whole batch (a third of MNIST's) is one
        // vectorised OR, not a listing.
        if col.iter().fold(0, |a, &p| a | p) != 0 {
            count[j] = row(col, &mut sample[j * b..(j + 1) * b], &mut val[j * b..(j + 1) * b]) as u32;
        }
    }
}

// The blocked sparse forward keeps `Blocking::fwd_block_bytes` of `W1`
// rows (`kb` rows of `G * NR` floats) in L1 while every sample of the
// batch passes over them.

/// The sizes of the groups `panels` panels go in, at most `max` each (the
/// sparse forward's and weight gradient's): as few groups as `max` allows,
/// since each walks every list again, of sizes that differ by at most one,
/// since a group of a single panel is NV chains, too few to hide the FMA
/// latency (4 panels in groups of 3 are 2 + 2, not 3 + 1; 6 in groups of
/// 4 are 3 + 3, not 4 + 1 + 1).
fn group_sizes(panels: usize, max: usize) -> impl Iterator<Item = usize> {
    let groups = panels.div_ceil(max.max(1));
    (0..groups).map(move |q| panels / groups + usize::from(q < panels % groups))
}

/// The groups of a task's panels `jp0 .. jp1` in the sparse forward, as
/// `group(first panel, panels)`, up to [`PG`] panels each
/// ([`group_sizes`]). Each ISA runs each group size as a function of its
/// own (`Isa::forward_group`): inlined into one, the four loops' registers
/// were allocated worse (more instructions for the same groups;
/// docs/performance-log.md).
pub(crate) fn forward_groups((jp0, jp1): (usize, usize), mut group: impl FnMut(usize, usize)) {
    let mut jp = jp0;
    for g in group_sizes(jp1.saturating_sub(jp0), PG) {
        group(jp, g);
        jp += g;
    }
}

/// Sparse `H[:, panels jp .. jp + G] := X W + b`, then ReLU when `relu`,
/// as the dense `forward_panels` computes it (see the module docs), every
/// sample, blocked over pixels; `part` is scratch space for partial sums
/// (resized here):
///
/// ```text
/// LOOP pixel blocks p0..p1, ascending (W1[p0..p1, group] stays in L1)
///   LOOP samples i with a lit pixel in p0..p1
///     part[i] += x[i, j] * W1[j, group]  for i's lit j in p0..p1, ascending
/// H[i, group] := part[i] + b, then ReLU if asked
/// ```
/// Each output element is still one FMA chain over its sample's lit pixels
/// in ascending order from zero (a partial sum is stored and reloaded as
/// the same f32), so the result is the dense one, bit for bit.
///
/// # Safety
/// The CPU runs `S`. `h` is valid for `csr.samples() * n` floats and, while
/// this runs, nothing else touches columns `jp * NR .. min((jp + G) * NR,
/// n)` of it. `w` holds at least `(jp + G) * k * NR` floats (`k = csr`'s
/// `K`), `bias` `(jp + G) * NR`.
#[inline(always)]
pub(crate) unsafe fn forward_group<S: Simd, const NV: usize, const G: usize>(
    h: *mut f32,
    jp: usize,
    csr: &Csr,
    w: &[f32],
    bias: &[f32],
    (n, relu): (usize, bool),
    part: &mut Vec<f32>,
) {
    let (nr, k, batch) = (NV * S::LANES, csr.k, csr.samples());
    let width = G * nr;
    assert!(w.len() >= (jp + G) * k * nr && bias.len() >= (jp + G) * nr && jp * nr < n);
    // Partial sums, one row of `width` per sample; a sample's row is only
    // valid once it has been visited (`cursor > 0`): its first visit starts
    // from zero instead of loading it, so the buffer is never cleared.
    let part = crate::aligned::window(part, batch * width, false);
    // Each sample's next entry not yet added.
    let mut cursor = vec![0usize; batch];
    let kb = (crate::caches::blocking().fwd_block_bytes / (4 * width)).max(1);
    for p1 in (kb..k + kb).step_by(kb).map(|p| p.min(k)) {
        for (i, next) in cursor.iter_mut().enumerate() {
            let (idx, val) = csr.sample(i);
            let mut c = *next;
            if c >= idx.len() || idx[c] as usize >= p1 {
                continue;
            }
            // SAFETY: sample i's partial row is `width` floats at i * width
            // of `part`; every W load reads NR floats of row `j < k` of
            // panel `jp + g`, inside `w` (checked above); the CPU runs S.
            unsafe {
                let pp = part.as_mut_ptr().add(i * width);
                let mut acc = [[S::zero(); NV]; G];
                if c > 0 {
                    for (g, row) in acc.iter_mut().enumerate() {
                        for (v, a) in row.iter_mut().enumerate() {
                            *a = S::load(pp.add(g * nr + v * S::LANES));
                        }
                    }
                }
                while c < idx.len() && (idx[c] as usize) < p1 {
                    let xv = S::splat(val[c]);
                    let wr = w.as_ptr().add(jp * k * nr + idx[c] as usize * nr);
                    for (g, row) in acc.iter_mut().enumerate() {
                        for (v, a) in row.iter_mut().enumerate() {
                            *a = S::fmadd(xv, S::load(wr.add(g * k * nr + v * S::LANES)), *a);
                        }
                    }
                    c += 1;
                }
                for (g, row) in acc.iter().enumerate() {
                    for (v, &a) in row.iter().enumerate() {
                        S::store(pp.add(g * nr + v * S::LANES), a);
                    }
                }
            }
            *next = c;
        }
    }
    // Epilogue: bias (+ ReLU) on each row (zero for a sample with no
    // non-zero entry), written straight into H when the whole group is
    // inside it; else through the partial row, whose valid columns are
    // then copied out.
    let cols = width.min(n - jp * nr);
    for (i, pr) in part.chunks_exact_mut(width).enumerate() {
        let visited = cursor[i] > 0;
        // SAFETY: `pr` and the padded bias from column jp * NR on hold
        // `width` floats; row i, columns jp * NR .. + cols are inside H and
        // this task's own (caller); the CPU runs S.
        unsafe {
            let out = h.add(i * n + jp * nr);
            let dst = if cols == width { out } else { pr.as_mut_ptr() };
            for o in (0..width).step_by(S::LANES) {
                let b = S::load(bias.as_ptr().add(jp * nr + o));
                let acc = if visited { S::load(pr.as_ptr().add(o)) } else { S::zero() };
                let z = S::add(acc, b);
                S::store(dst.add(o), if relu { S::relu(z) } else { z });
            }
            if cols < width {
                std::ptr::copy_nonoverlapping(pr.as_ptr(), out, cols);
            }
        }
    }
}

/// Sparse `dW := X^T dZ` for one task's panels `jp0 ..` (its slices of the
/// panel layout: `dw`, and with `update` also `W` and its state), as the dense
/// `weight_grad_panels` computes it. `dz` is `(B, n)`.
///
/// Each group of panels first copies its columns of `dZ` into `scratch`,
/// contiguous (`B` rows of `G * NR` floats, zeros past column `n`): in
/// `dZ` itself a sample's slice is one of `B` blocks 4 `n` bytes apart,
/// and at `n = 512` that power-of-two stride maps them all onto a few sets
/// of the L1 cache, which then holds a fraction of what it could.
///
/// # Safety
/// The CPU runs `S`; `dw` (and `W`, its state) hold whole panels of `k * NR`
/// floats; `csc` was built from a batch of `dz`'s rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weight_grad_sparse<S: Simd, const NV: usize, R: LaneRule<S>>(
    dw: &mut [f32],
    jp0: usize,
    csc: &Csc,
    dz: &[f32],
    n: usize,
    k: usize,
    update: Option<(crate::Update<'_, f32>, R)>,
    scratch: &mut Vec<f32>,
) {
    let (mut update, coeffs) = match update {
        Some((u, r)) => (Some(u), Some(r)),
        None => (None, None),
    };
    let nr = NV * S::LANES;
    let panels = dw.len() / (k * nr).max(1);
    let b = csc.samples;
    assert!(csc.count.len() == k && (jp0 + panels) * nr < n + nr && dz.len() == b * n);
    if let Some(u) = &update {
        assert!(u.len() == dw.len(), "W must match dW");
    }
    let full = (crate::caches::blocking().grad_group_bytes / (4 * nr)).clamp(1, 4);
    let mut p = 0;
    for g in group_sizes(panels, full) {
        // The group's columns of dZ, contiguous, zero past column n.
        let (c0, width) = ((jp0 + p) * nr, g * nr);
        let cols = width.min(n - c0);
        // Only a group that sticks out of dZ needs the zeros past column n.
        let scratch = crate::aligned::window(scratch, b * width, cols < width);
        for (dst, src) in scratch.chunks_exact_mut(width).zip(dz.chunks_exact(n)) {
            dst[..cols].copy_from_slice(&src[c0..c0 + cols]);
        }
        // SAFETY: forwarded contract; scratch holds B rows of g * NR.
        unsafe {
            match g {
                4 => grad_group::<S, NV, 4, R>(dw, p, csc, scratch, k, &mut update, coeffs),
                2 => grad_group::<S, NV, 2, R>(dw, p, csc, scratch, k, &mut update, coeffs),
                3 => grad_group::<S, NV, 3, R>(dw, p, csc, scratch, k, &mut update, coeffs),
                _ => grad_group::<S, NV, 1, R>(dw, p, csc, scratch, k, &mut update, coeffs),
            }
        }
        p += g;
    }
}

/// `G` of the task's panels from local panel `p` on, every pixel, from
/// `dzg`, their columns of `dZ` (`B` rows of `G * NR`).
///
/// # Safety
/// As [`weight_grad_sparse`].
#[inline(always)]
unsafe fn grad_group<S: Simd, const NV: usize, const G: usize, R: LaneRule<S>>(
    dw: &mut [f32],
    p: usize,
    csc: &Csc,
    dzg: &[f32],
    k: usize,
    update: &mut Option<crate::Update<'_, f32>>,
    coeffs: Option<R>,
) {
    let nr = NV * S::LANES;
    let width = G * nr;
    assert!(dw.len() >= (p + G) * k * nr && dzg.len() >= csc.samples * width);
    for j in 0..k {
        let (samples, vals) = csc.pixel(j);
        // SAFETY: each dZ load reads NR floats of row `b < B` of dzg, at
        // column g * NR + v * LANES < width (checked above); dW / W / state
        // accesses are at row j < k of local panels p + g, inside the
        // task's slices; the CPU runs S (caller).
        unsafe {
            let mut acc = [[S::zero(); NV]; G];
            for (&b, &xv) in samples.iter().zip(vals) {
                let xv = S::splat(xv);
                let row = dzg.as_ptr().add(b as usize * width);
                for (g, a_row) in acc.iter_mut().enumerate() {
                    for (v, a) in a_row.iter_mut().enumerate() {
                        *a = S::fmadd(xv, S::load(row.add(g * nr + v * S::LANES)), *a);
                    }
                }
            }
            for (g, a_row) in acc.iter().enumerate() {
                let at = (p + g) * k * nr + j * nr;
                match (update.as_mut(), &coeffs) {
                    // A pixel dark in the whole batch: a zero gradient row.
                    (Some(u), Some(c)) if samples.is_empty() => {
                        let p = u.ptrs().at(at);
                        for v in 0..NV {
                            c.apply_no_grad(p.at(v * S::LANES));
                        }
                    }
                    (Some(u), Some(c)) => {
                        let p = u.ptrs().at(at);
                        for (v, &a) in a_row.iter().enumerate() {
                            c.apply(p.at(v * S::LANES), a);
                        }
                    }
                    _ => {
                        for (v, &a) in a_row.iter().enumerate() {
                            S::store(dw.as_mut_ptr().add(at + v * S::LANES), a);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{group_sizes, transpose_pixels, PixelListing};
    use crate::simd::Lister;

    #[test]
    fn panel_groups_are_as_few_as_allowed_and_balanced() {
        let sizes = |p, max| group_sizes(p, max).collect::<Vec<_>>();
        assert_eq!(sizes(4, 3), [2, 2]);
        assert_eq!(sizes(6, 4), [3, 3]);
        assert_eq!(sizes(16, 3), [3, 3, 3, 3, 2, 2]);
        assert_eq!(sizes(8, 4), [4, 4]);
        assert_eq!(sizes(1, 4), [1]);
        assert!(sizes(0, 4).is_empty());
        for p in 0..40 {
            for max in 1..=4 {
                let s = sizes(p, max);
                assert_eq!(s.iter().sum::<usize>(), p);
                assert_eq!(s.len(), p.div_ceil(max));
                assert!(s.iter().all(|&g| g <= max && g + 1 >= s[0]), "{p} in {max}: {s:?}");
            }
        }
    }

    /// Every row lister (a vector at a time, and the whole-row one where
    /// the CPU has it) against a plain listing of the non-zero bytes, over
    /// rows of every length to 200 and MNIST's, all dark, all lit and
    /// mixed, with the slots NaN-filled before each call.
    fn row_listers_match_a_plain_listing<S: crate::simd::Simd>() {
        if !S::detected() {
            return;
        }
        let lut = crate::shared::pixel_table::<f32>();
        type Lister = unsafe fn(&[u8], &mut [u32], &mut [f32]) -> Option<usize>;
        let lanes: Lister = |src, idx, val| {
            // SAFETY: S was detected (above); the callers pass slots of
            // `src.len()` entries.
            Some(unsafe { super::csr_row::<S>(src, idx, val) })
        };
        // Where this CPU has one (the callers pass slots of `src.len()`).
        let wide: Lister = |src, idx, val| S::wide_row_lister().map(|row| row(src, idx, val));
        let patterns: [fn(usize) -> u8; 4] = [
            |_| 0,
            |i| (i % 255 + 1) as u8,
            |i| if (i * 7919) % 5 < 3 { 0 } else { (i * 31 % 256) as u8 },
            |i| if i % 97 == 5 || i % 64 == 63 { 255 } else { 0 },
        ];
        let mut listed = 0;
        for k in (0..=200).chain([255, 256, 257, 783, 784, 785, 1000]) {
            for (pi, pat) in patterns.iter().enumerate() {
                // Offset by one byte, so that the rows are not aligned.
                let buf: Vec<u8> = (0..=k).map(|i| if i == 0 { 9 } else { pat(i * 3 + k) }).collect();
                let src = &buf[1..];
                let want: Vec<(u32, u32)> =
                    (0..k).filter(|&j| src[j] != 0).map(|j| (j as u32, lut[usize::from(src[j])].to_bits())).collect();
                for (name, lister) in [("lanes", lanes), ("wide", wide)] {
                    let (mut idx, mut val) = (vec![u32::MAX; k], vec![f32::NAN; k]);
                    // SAFETY: S was detected; the slots hold k entries.
                    let Some(c) = (unsafe { lister(src, &mut idx, &mut val) }) else { continue };
                    let got: Vec<(u32, u32)> = idx[..c].iter().zip(&val[..c]).map(|(&j, v)| (j, v.to_bits())).collect();
                    assert!(got == want, "{} {name}: K {k}, pattern {pi}", S::NAME);
                    listed += 1;
                }
            }
        }
        assert!(listed > 0);
    }

    #[test]
    fn row_listers_list_every_non_zero_pixel_in_order() {
        #[cfg(target_arch = "x86_64")]
        {
            row_listers_match_a_plain_listing::<crate::simd::Avx2>();
            row_listers_match_a_plain_listing::<crate::simd::Avx512>();
        }
        #[cfg(target_arch = "aarch64")]
        row_listers_match_a_plain_listing::<crate::simd::Neon>();
    }

    #[test]
    fn transpose_puts_every_byte_in_its_place() {
        // Up to 64 pixels a step (AVX-512 BW, where this CPU has it), then
        // 8, then one: ranges of 13 and of 130 pixels from every multiple
        // of 8.
        #[cfg(target_arch = "x86_64")]
        let widths = if is_x86_feature_detected!("avx512bw") { vec![false, true] } else { vec![false] };
        #[cfg(not(target_arch = "x86_64"))]
        let widths = vec![false];
        let shapes = [(0, 5), (1, 1), (7, 9), (8, 8), (9, 17), (16, 784), (13, 63), (24, 200), (17, 64)];
        for (wide, (b, k)) in widths.into_iter().flat_map(|w| shapes.map(|s| (w, s))) {
            let x: Vec<u8> = (0..(b + 3) * k).map(|i| (i * 7 + i / 5) as u8).collect();
            let rows: Vec<u32> = (0..b as u32).map(|i| (i * 5 + 2) % (b as u32 + 3)).collect();
            let starts = (0..k).step_by(8);
            let ranges = starts.flat_map(|j0| [j0..(j0 + 13).min(k), j0..(j0 + 130).min(k)]);
            for js in std::iter::once(0..k).chain(ranges) {
                let mut t = vec![0xaa; js.len() * b];
                let how = PixelListing::new(|_, _, _| 0, Lister::WordScan, wide);
                transpose_pixels(&mut t, &x, &rows, k, js.clone(), how);
                for (i, &r) in rows.iter().enumerate() {
                    for j in js.clone() {
                        assert_eq!(
                            t[(j - js.start) * b + i],
                            x[r as usize * k + j],
                            "wide {wide}, B {b}, K {k}, pixels {js:?}: sample {i}, pixel {j}"
                        );
                    }
                }
            }
        }
    }
}
