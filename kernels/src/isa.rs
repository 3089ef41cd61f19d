//! The SIMD backends: one [`Backend`] implementation generic over the
//! instruction set, and per instruction set the thin `#[target_feature]`
//! entry points that instantiate the generic bodies of `gemm.rs` and
//! `small.rs` with that set enabled.
//!
//! Shapes are checked here, in safe code, before any entry point runs; the
//! entry points are reachable only through [`SimdBackend`], which
//! `crate::select` builds only after detecting the instruction set.

use crate::scalar::{check_len, check_rows, column_sums, softmax_xent_row, softmax_xent_rows, UPDATE_CHUNK};
use crate::simd::Simd;
use crate::sparse::{self, Csc, Csr};
use crate::{gemm, peak, small, AlignedVec, Backend, Dims, Layer1Path, PanelLayout, RmsProp, XentStats};
use rayon::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};

/// Per-instruction-set entry points (see the module docs).
///
/// # Safety
/// Every method requires that the CPU runs `Self` and that its slices have
/// the shapes the generic body documents.
pub(crate) trait Isa: Simd {
    /// Rows of the GEMM register tile.
    const MR: usize;
    /// Vectors per tile row; `NR = NV * LANES`.
    const NV: usize;
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_panels(
        h: *mut f32,
        panels: (usize, usize),
        x: &[u8],
        rows: &[u32],
        w: &[f32],
        bias: &[f32],
        k: usize,
        n: usize,
        apack: &mut Vec<f32>,
    );
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_panels(
        dw: &mut [f32],
        jp0: usize,
        xt: &[f32],
        dz: &[f32],
        batch: usize,
        k: usize,
        n: usize,
        bpack: &mut Vec<f32>,
        update: Option<gemm::Update<'_>>,
    );
    unsafe fn logits(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize);
    unsafe fn relu_backward_rows(dh: &mut [f32], dz: &[f32], wt: &[f32], h: &[f32], k: usize, n: usize);
    unsafe fn weight_grad_rows(dw: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize);
    unsafe fn rmsprop(w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp);
    unsafe fn fma_chains(iters: u64) -> f32;
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_sparse(
        h: *mut f32,
        panels: (usize, usize),
        csr: &Csr,
        w: &[f32],
        bias: &[f32],
        n: usize,
        part: &mut Vec<f32>,
    );
    /// The non-zero pixels of one row (see `sparse::csr_row`).
    unsafe fn csr_row(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize;
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_sparse(
        dw: &mut [f32],
        jp0: usize,
        csc: &Csc,
        dz: &[f32],
        n: usize,
        k: usize,
        update: Option<gemm::Update<'_>>,
        scratch: &mut Vec<f32>,
    );
}

/// Implements [`Isa`] for `$isa`: each entry point is the generic body
/// compiled with `$features` enabled (`$gv`: the `V` of
/// `small::weight_grad_rows`). (A macro only because the six
/// wrappers differ in nothing but the type and the feature string.)
macro_rules! isa_entry_points {
    ($isa:ty, $features:literal, $mr:expr, $nv:expr, $gv:expr) => {
        impl Isa for $isa {
            const MR: usize = $mr;
            const NV: usize = $nv;
            #[target_feature(enable = $features)]
            unsafe fn forward_panels(
                h: *mut f32,
                panels: (usize, usize),
                x: &[u8],
                rows: &[u32],
                w: &[f32],
                bias: &[f32],
                k: usize,
                n: usize,
                apack: &mut Vec<f32>,
            ) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::forward_panels::<Self, { $mr }, { $nv }>(h, panels, x, rows, w, bias, k, n, apack) }
            }
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_panels(
                dw: &mut [f32],
                jp0: usize,
                xt: &[f32],
                dz: &[f32],
                batch: usize,
                k: usize,
                n: usize,
                bpack: &mut Vec<f32>,
                update: Option<gemm::Update<'_>>,
            ) {
                // SAFETY: forwarded contract (trait docs).
                unsafe {
                    gemm::weight_grad_panels::<Self, { $mr }, { $nv }>(dw, jp0, xt, dz, batch, k, n, bpack, update)
                }
            }
            #[target_feature(enable = $features)]
            unsafe fn logits(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::logits::<Self>(p, h, wt, b, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn relu_backward_rows(dh: &mut [f32], dz: &[f32], wt: &[f32], h: &[f32], k: usize, n: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::relu_backward_rows::<Self>(dh, dz, wt, h, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_rows(dw: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::weight_grad_rows::<Self, { $gv }>(dw, k0, h, dz, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn rmsprop(w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::rmsprop::<Self>(w, g, v, opt) }
            }
            #[target_feature(enable = $features)]
            unsafe fn fma_chains(iters: u64) -> f32 {
                // SAFETY: forwarded contract (trait docs).
                unsafe { peak::fma_chains::<Self>(iters) }
            }
            #[target_feature(enable = $features)]
            unsafe fn forward_sparse(
                h: *mut f32,
                panels: (usize, usize),
                csr: &Csr,
                w: &[f32],
                bias: &[f32],
                n: usize,
                part: &mut Vec<f32>,
            ) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::forward_sparse::<Self, { $nv }>(h, panels, csr, w, bias, n, part) }
            }
            #[target_feature(enable = $features)]
            unsafe fn csr_row(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize {
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::csr_row::<Self>(src, idx, val) }
            }
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_sparse(
                dw: &mut [f32],
                jp0: usize,
                csc: &Csc,
                dz: &[f32],
                n: usize,
                k: usize,
                update: Option<gemm::Update<'_>>,
                scratch: &mut Vec<f32>,
            ) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::weight_grad_sparse::<Self, { $nv }>(dw, jp0, csc, dz, n, k, update, scratch) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
isa_entry_points!(crate::simd::Avx2, "avx2,fma", crate::params::AVX2_MR, crate::params::AVX2_NV, 2);
#[cfg(target_arch = "x86_64")]
isa_entry_points!(crate::simd::Avx512, "avx512f", crate::params::AVX512_MR, crate::params::AVX512_NV, 1);
#[cfg(target_arch = "aarch64")]
isa_entry_points!(crate::simd::Neon, "neon", crate::params::NEON_MR, crate::params::NEON_NV, 2);

/// The backend running instruction set `I`. Only `SimdBackend::new` makes
/// one, and only when `I` is detected.
pub(crate) struct SimdBackend<I> {
    /// The `Layer1Path` in force, as its index in `PATHS`.
    path: AtomicU8,
    _isa: PhantomData<I>,
}

/// Samples per task of the logits and softmax-xent: a fixed size, so that
/// the blocks (and the per-block partial results) never depend on the
/// thread count.
const LAYER2_ROWS: usize = 32;

const PATHS: [Layer1Path; 3] = [Layer1Path::Auto, Layer1Path::Dense, Layer1Path::Sparse];

impl<I: Isa> SimdBackend<I> {
    /// The backend, if this CPU runs `I`.
    pub(crate) fn new() -> Option<Self> {
        I::detected().then_some(SimdBackend { path: AtomicU8::new(0), _isa: PhantomData })
    }
    const NR: usize = I::NV * I::LANES;

    /// Whether layer 1 should skip zero pixels for this batch: `build`
    /// scans it for its non-zero pixels (unless the path is forced dense)
    /// and returns how many there are.
    fn sparse(&self, rows: &[u32], k: usize, build: impl FnOnce() -> usize) -> bool {
        let path = PATHS[usize::from(self.path.load(Ordering::Relaxed))];
        if path == Layer1Path::Dense || rows.is_empty() || k == 0 || k > u32::MAX as usize {
            return false;
        }
        let nonzeros = build();
        path == Layer1Path::Sparse || (nonzeros as f64) <= crate::params::SPARSE_MAX_DENSITY * (rows.len() * k) as f64
    }
}

thread_local! {
    /// Packing buffers of the calling thread, kept between calls so that no
    /// step allocates or clears them again: per-task panels (`TASK`), and
    /// the `X^T` a whole weight-gradient call shares (`SHARED`); the sparse
    /// path's non-zero lists (`NONZEROS`).
    static TASK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SHARED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static NONZEROS: RefCell<(Csr, Csc)> = RefCell::new(Default::default());
}

/// Runs `f` with this thread's non-zero lists (fresh ones when nested).
fn with_nonzeros<R>(f: impl FnOnce(&mut Csr, &mut Csc) -> R) -> R {
    NONZEROS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => {
            let (csr, csc) = &mut *b;
            f(csr, csc)
        }
        Err(_) => f(&mut Csr::default(), &mut Csc::default()),
    })
}

/// Runs `f` with one of this thread's buffers, or a fresh one when that is
/// already in use further up this thread's stack (a nested call).
fn with_buffer<R>(key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// The output pointer of a product whose tasks write disjoint columns.
struct SharedOut(*mut f32);
// SAFETY: only moved into tasks that write disjoint parts of the buffer
// (see each use), which outlives them.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `W (K, N)` transposed to `(N, K)`: row `j` of the result is column `j`
/// of `W`, written in order (the reads stride over `W`, 20 KiB at layer 2's
/// shape, which stays in L1). Cache-line aligned: at `K = 512` every row
/// then starts a line, and no vector load of a row straddles two lines
/// (with `Vec`'s 16-byte alignment each AVX-512 load did, and layer 2's
/// products ran 20% slower than with AVX2).
fn transpose(w: &[f32], k: usize, n: usize) -> AlignedVec<f32> {
    let mut t = AlignedVec::zeroed(k * n);
    for (j, col) in t.chunks_exact_mut(k.max(1)).enumerate() {
        for (o, row) in col.iter_mut().zip(w.chunks_exact(n)) {
            *o = row[j];
        }
    }
    t
}

/// How many items of `total` each rayon task takes: an even share per
/// thread, rounded up to a multiple of `unit` (at least `unit`).
fn share(total: usize, unit: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    total.div_ceil(threads).div_ceil(unit).max(1) * unit
}

impl<I: Isa> SimdBackend<I> {
    /// `dW := X^T dZ`, `db`, optionally fused with RMSprop on `(W, v)`.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad_u8(
        &self,
        dw: &mut [f32],
        mut update: Option<(&mut [f32], &mut [f32], RmsProp)>,
        db: &mut [f32],
        x: &[u8],
        rows: &[u32],
        dz: &[f32],
        d: Dims,
    ) {
        let Dims { k, n } = d;
        let layout = self.w1_layout(k, n);
        check_rows(x, rows, k);
        check_len("dW (panel layout)", dw.len(), layout.len());
        check_len("db", db.len(), n);
        check_len("dZ", dz.len(), rows.len() * n);
        if n == 0 {
            return;
        }
        column_sums(db, dz, n);
        if k == 0 {
            return;
        }
        let batch = rows.len();
        let chunk = share(layout.panels(), 1) * k * Self::NR;
        // One parallel region: each task lists the batch's non-zero pixels
        // by pixel itself (the same lists, so every task takes the same
        // path) and then runs its panels; it returns whether it did.
        let task = |t: usize, dwc: &mut [f32], update: Option<gemm::Update<'_>>| {
            with_nonzeros(|_, csc| {
                // SAFETY: I was detected (a SimdBackend<I> exists).
                let row: sparse::CsrRow = |src, idx, val| unsafe { I::csr_row(src, idx, val) };
                if !self.sparse(rows, k, || {
                    csc.build(x, rows, k, I::COMPRESSES.then_some(row));
                    csc.nonzeros()
                }) {
                    return false;
                }
                // SAFETY: I was detected; shapes checked above; dwc (and W,
                // v) hold whole panels; csc was built from this batch.
                with_buffer(&TASK, |scratch| unsafe {
                    I::weight_grad_sparse(dwc, t * chunk / (k * Self::NR), csc, dz, n, k, update, scratch)
                });
                true
            })
        };
        let went_sparse: Vec<bool> = match &mut update {
            None => dw.par_chunks_mut(chunk).enumerate().map(|(t, dwc)| task(t, dwc, None)).collect(),
            Some((w, v, opt)) => dw
                .par_chunks_mut(chunk)
                .zip(w.par_chunks_mut(chunk))
                .zip(v.par_chunks_mut(chunk))
                .enumerate()
                .map(|(t, ((dwc, w), v))| task(t, dwc, Some(gemm::Update { w, v, opt: *opt })))
                .collect(),
        };
        if went_sparse.iter().all(|&s| s) {
            return;
        }
        assert!(!went_sparse.contains(&true), "tasks disagreed on the layer-1 path of one batch");
        with_buffer(&SHARED, |xt| {
            // X^T, packed once for all tasks: micro-panels of MR pixels x B.
            xt.resize(k.div_ceil(I::MR) * I::MR * batch, 0.0);
            xt.par_chunks_mut((I::MR * batch).max(1))
                .enumerate()
                .for_each(|(p, dst)| gemm::pack_xt(dst, I::MR, x, rows, p * I::MR, k));
            let xt = &*xt;
            let task = |t: usize, dwc: &mut [f32], update: Option<gemm::Update<'_>>| {
                // SAFETY: I was detected; shapes checked above; dwc (and W,
                // v) hold whole panels; xt was sized for k and the batch.
                with_buffer(&TASK, |bpack| unsafe {
                    I::weight_grad_panels(dwc, t * chunk / (k * Self::NR), xt, dz, batch, k, n, bpack, update)
                })
            };
            match update {
                None => dw.par_chunks_mut(chunk).enumerate().for_each(|(t, dwc)| task(t, dwc, None)),
                Some((w, v, opt)) => dw
                    .par_chunks_mut(chunk)
                    .zip(w.par_chunks_mut(chunk))
                    .zip(v.par_chunks_mut(chunk))
                    .enumerate()
                    .for_each(|(t, ((dwc, w), v))| task(t, dwc, Some(gemm::Update { w, v, opt }))),
            }
        });
    }
}

impl<I: Isa> Backend<f32> for SimdBackend<I> {
    fn name(&self) -> &'static str {
        I::NAME
    }

    fn describe(&self) -> String {
        let path = PATHS[usize::from(self.path.load(Ordering::Relaxed))];
        format!("{} ({}x{} register tiles, layer 1 {path:?})", I::NAME, I::MR, Self::NR)
    }

    fn set_layer1_path(&self, path: Layer1Path) {
        let i = PATHS.iter().position(|&p| p == path).expect("a known path");
        self.path.store(i as u8, Ordering::Relaxed);
    }

    fn fma_peak_gflops(&self, seconds: f64) -> Option<f64> {
        let mut iters = 1u64 << 16;
        loop {
            let start = std::time::Instant::now();
            // SAFETY: I was detected (SimdBackend::new).
            std::hint::black_box(unsafe { I::fma_chains(std::hint::black_box(iters)) });
            let t = start.elapsed().as_secs_f64();
            if t >= seconds {
                return Some(peak::flops::<I>(iters) / t / 1e9);
            }
            iters *= 2;
        }
    }

    fn w1_layout(&self, k: usize, n: usize) -> PanelLayout {
        PanelLayout::panels_of(k, n, Self::NR)
    }

    fn dense_relu_forward_u8(&self, h: &mut [f32], x: &[u8], rows: &[u32], w: &[f32], b: &[f32], d: Dims) {
        let Dims { k, n } = d;
        let layout = self.w1_layout(k, n);
        check_rows(x, rows, k);
        check_len("H", h.len(), rows.len() * n);
        check_len("W (panel layout)", w.len(), layout.len());
        check_len("b", b.len(), n);
        if n == 0 || rows.is_empty() {
            return;
        }
        let mut bias = b.to_vec();
        bias.resize(layout.panels() * Self::NR, 0.0);
        // Threads own columns (panels) of H, the same split as dW1's, so
        // each core reads the part of W1 that it updated itself.
        let per_task = share(layout.panels(), 1);
        let out = SharedOut(h.as_mut_ptr());
        let tasks = (0..layout.panels().div_ceil(per_task)).into_par_iter();
        let panels_of = |t: usize| (t * per_task, ((t + 1) * per_task).min(layout.panels()));
        // One parallel region: each task lists the non-zero pixels of the
        // whole batch itself (the same lists, so every task takes the same
        // path) and then runs its panels; no task waits on another's lists
        // or reads them from another core's cache.
        tasks.for_each(|t| {
            with_nonzeros(|csr, _| {
                // SAFETY: I was detected (a SimdBackend<I> exists).
                let row: sparse::CsrRow = |src, idx, val| unsafe { I::csr_row(src, idx, val) };
                if self.sparse(rows, k, || {
                    csr.build(x, rows, k, row);
                    csr.nonzeros()
                }) {
                    // SAFETY: I was detected; shapes checked above; `out`
                    // covers all of H, which outlives the loop, and tasks
                    // own disjoint panel ranges, so no column is shared.
                    with_buffer(&TASK, |part| unsafe {
                        I::forward_sparse(out.get(), panels_of(t), csr, w, &bias, n, part)
                    })
                } else {
                    // SAFETY: as above.
                    with_buffer(&TASK, |apack| unsafe {
                        I::forward_panels(out.get(), panels_of(t), x, rows, w, &bias, k, n, apack)
                    })
                }
            })
        });
    }

    fn dense_softmax_xent(
        &self,
        p: &mut [f32],
        dz: &mut [f32],
        h: &[f32],
        w: &[f32],
        b: &[f32],
        labels: &[u8],
        rows: &[u32],
        d: Dims,
    ) -> XentStats<f32> {
        let Dims { k, n } = d;
        let batch = rows.len();
        check_len("H", h.len(), batch * k);
        check_len("W", w.len(), k * n);
        check_len("b", b.len(), n);
        check_len("P", p.len(), batch * n);
        check_len("dZ", dz.len(), batch * n);
        let wt = transpose(w, k, n);
        if n == 0 || k == 0 || batch <= LAYER2_ROWS {
            // SAFETY: I was detected; shapes checked above.
            unsafe { I::logits(p, h, &wt, b, k, n) };
            return softmax_xent_rows(p, dz, labels, rows, n);
        }
        // Blocks of rows in parallel; each row's loss is kept and the sum
        // is then taken in row order, as `softmax_xent_rows` does.
        let batch_t = batch as f32;
        let mut per_row = vec![(0f32, false); batch];
        p.par_chunks_mut(LAYER2_ROWS * n)
            .zip(dz.par_chunks_mut(LAYER2_ROWS * n))
            .zip(h.par_chunks(LAYER2_ROWS * k))
            .zip(rows.par_chunks(LAYER2_ROWS))
            .zip(per_row.par_chunks_mut(LAYER2_ROWS))
            .for_each(|((((pc, dzc), hc), rc), out)| {
                // SAFETY: I was detected; the blocks are whole rows of the
                // shapes checked above.
                unsafe { I::logits(pc, hc, &wt, b, k, n) };
                for (i, (&r, o)) in rc.iter().zip(out).enumerate() {
                    let y = usize::from(labels[r as usize]);
                    assert!(y < n, "label {y} of row {r} is not below N = {n}");
                    *o = softmax_xent_row(&mut pc[i * n..(i + 1) * n], &mut dzc[i * n..(i + 1) * n], y, batch_t);
                }
            });
        let mut stats = XentStats { loss_sum: 0.0, correct: 0 };
        for &(loss, hit) in &per_row {
            stats.loss_sum += loss;
            stats.correct += usize::from(hit);
        }
        stats
    }

    fn dense_backward(&self, dw: &mut [f32], db: &mut [f32], h: &[f32], dz: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_len("dW", dw.len(), k * n);
        check_len("db", db.len(), n);
        if n == 0 {
            return;
        }
        assert!(dz.len().is_multiple_of(n), "dZ has {} elements, not a multiple of N = {n}", dz.len());
        check_len("H", h.len(), dz.len() / n * k);
        column_sums(db, dz, n);
        // Blocks of hidden units (rows of dW) in parallel, an even share per
        // thread: each element is one chain over the whole batch, so the
        // split changes no result.
        let rows_per_task = share(k, 2 * I::LANES);
        dw.par_chunks_mut((rows_per_task * n).max(1)).enumerate().for_each(|(t, dwc)| {
            // SAFETY: I was detected; shapes checked above; dwc is rows
            // t * rows_per_task .. of dW.
            unsafe { I::weight_grad_rows(dwc, t * rows_per_task, h, dz, k, n) };
        });
    }

    fn dense_backward_u8(&self, dw: &mut [f32], db: &mut [f32], x: &[u8], rows: &[u32], dz: &[f32], d: Dims) {
        self.weight_grad_u8(dw, None, db, x, rows, dz, d);
    }

    fn dense_backward_u8_rmsprop(
        &self,
        w: &mut [f32],
        v: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        x: &[u8],
        rows: &[u32],
        dz: &[f32],
        d: Dims,
        opt: RmsProp,
    ) {
        check_len("W", w.len(), dw.len());
        check_len("v", v.len(), dw.len());
        self.weight_grad_u8(dw, Some((w, v, opt)), db, x, rows, dz, d);
    }

    fn relu_backward_input(&self, dh: &mut [f32], dz: &[f32], w: &[f32], h: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_len("W", w.len(), k * n);
        check_len("dH", dh.len(), h.len());
        if k == 0 {
            return;
        }
        let batch = h.len() / k;
        check_len("H", h.len(), batch * k);
        check_len("dZ", dz.len(), batch * n);
        if n == 0 {
            dh.fill(0.0);
            return;
        }
        let wt = transpose(w, k, n);
        let chunk = share(batch, 1);
        dh.par_chunks_mut(chunk * k).zip(h.par_chunks(chunk * k)).enumerate().for_each(|(t, (dhc, hc))| {
            let rows = dhc.len() / k;
            let dzc = &dz[t * chunk * n..(t * chunk + rows) * n];
            // SAFETY: I was detected; shapes checked above.
            unsafe { I::relu_backward_rows(dhc, dzc, &wt, hc, k, n) }
        });
    }

    fn rmsprop(&self, w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp) {
        check_len("g", g.len(), w.len());
        check_len("v", v.len(), w.len());
        w.par_chunks_mut(UPDATE_CHUNK).zip(g.par_chunks(UPDATE_CHUNK)).zip(v.par_chunks_mut(UPDATE_CHUNK)).for_each(
            |((w, g), v)| {
                // SAFETY: I was detected; the three chunks have equal lengths.
                unsafe { I::rmsprop(w, g, v, opt) }
            },
        );
    }
}
