//! The SIMD backend: one [`Backend`] implementation generic over the
//! instruction set, driving the per-instruction-set entry points of
//! `isa.rs` (which instantiate the generic bodies of `gemm.rs`,
//! `sparse.rs`, `small.rs`, `optim.rs` and `peak.rs`): shapes are checked
//! here, in safe code, before any entry point runs; the work is split into
//! tasks over the thread pool; the activations, softmax and updates that
//! are not fused into a product run here.

use crate::caches::Cpu;
use crate::denormals::Flushed;
use crate::gemm::Lhs;
use crate::isa::Isa;
use crate::par;
use crate::params::{HIDDEN_FORWARD_MAX_DENSITY, HIDDEN_GRAD_MAX_DENSITY, SPARSE_MAX_DENSITY};
use crate::shared::{
    check_len, check_rows, column_sums, output_rows, softmax_rows, softmax_xent_row, softmax_xent_rows, UPDATE_CHUNK,
};
use crate::simd::Lister;
use crate::sparse::{self, Csc, Csr, PixelListing};
use crate::{
    peak, side_by_side, Activation, AlignedVec, Applied, Backend, Ceilings, Derivative, Dims, Grads, InputGrad,
    InputLists, Layer1Path, PanelLayout, Rows, Update, Weights, XentStats,
};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The backend running instruction set `I`. Only `SimdBackend::new` makes
/// one, and only when `I` is detected. It holds what it chose for this CPU
/// then (the sub-features it detected); no other state: every option (such
/// as the input layer's path) comes with each call.
pub(crate) struct SimdBackend<I> {
    /// How the input layer lists its pixels on this CPU.
    pixels: PixelListing,
    _isa: PhantomData<I>,
}

/// Samples per block of the logits and softmax-xent: a fixed size, so that
/// the blocks never depend on the thread count (each row's loss is kept and
/// summed in row order, so the size does not change any result). 8 rows
/// give a batch of 128 sixteen blocks, enough for 16 threads; rayon runs
/// about as many tasks as there are threads, not one per block.
const LAYER2_ROWS: usize = 8;

/// From this many threads on, the input layer's forward builds its
/// per-sample lists once, in parallel by samples, before its tasks run,
/// instead of in every task, and its weight gradient its per-pixel lists,
/// in parallel by pixels. Built per task, the lists are a fixed cost of
/// every task (about a fifth of the single-thread forward), which stops the
/// forward scaling at about 4x; at 2 threads the per-task build measured
/// faster than a shared build with its barrier and cross-core reads
/// (docs/performance-log.md). 4 is where, by that measurement, the shared
/// build's cost (`1/T` of the build plus the barrier) should fall below the
/// per-task build: an estimate, not a measurement (2 cores here).
const SHARED_LISTS_MIN_THREADS: usize = 4;

/// Micro-panels of `X^T` one packing task writes for the dense weight
/// gradient: the 8 panels' pixels of a batch row (48 for AVX2) are one or
/// two cache lines, read once instead of once a panel.
const XT_GROUP: usize = 8;

impl<I: Isa> SimdBackend<I> {
    /// The backend, if this CPU runs `I`.
    pub(crate) fn new() -> Option<Self> {
        if !I::detected() {
            return None;
        }
        // A lister a vector at a time, the ISA's whole-row one where this
        // CPU has its sub-features.
        // SAFETY: I was detected (above); the listers' callers pass slots
        // of `src.len()` entries.
        let lanes: sparse::CsrRow = |src, idx, val| unsafe { I::csr_row(src, idx, val) };
        let row = I::wide_row_lister().unwrap_or(lanes);
        let pixels = PixelListing::new(row, csc_lister::<I>(), true);
        Some(SimdBackend { pixels, _isa: PhantomData })
    }
    const NR: usize = I::NV * I::LANES;

    /// Whether a product should skip the zeros of its left operand (`m`
    /// rows of `k`): `build` lists its non-zeros (unless the path is forced
    /// dense) and returns how many there are; `auto` skips them at a
    /// density of at most `max_density`.
    fn sparse(path: Layer1Path, (m, k): (usize, usize), max_density: f64, build: impl FnOnce() -> usize) -> bool {
        if path == Layer1Path::Dense || m == 0 || k == 0 || k > u32::MAX as usize {
            return false;
        }
        let nonzeros = build();
        path == Layer1Path::Sparse || (nonzeros as f64) <= max_density * (m * k) as f64
    }

    /// Checks a hidden layer's input-gradient operands (`W` in the layout
    /// of a `(K, N)` kernel, `dA` and `A` `(B, K)`, `dZ` `(B, N)`); returns
    /// `B`, or `None` when `K = 0` leaves nothing to compute.
    fn input_grad_shapes(&self, da: &[f32], dz: &[f32], w: &[f32], a: &[f32], Dims { k, n }: Dims) -> Option<usize> {
        check_len("W (panel layout)", w.len(), self.weight_layout(k, n).len());
        check_len("dA", da.len(), a.len());
        if k == 0 {
            return None;
        }
        let batch = a.len() / k;
        check_len("A", a.len(), batch * k);
        check_len("dZ", dz.len(), batch * n);
        Some(batch)
    }

    /// dA = dZ W^T for the panels of dA's columns this thread claims from
    /// `share`, until none are left, then the activation's derivative on
    /// those columns. Sparse (dZ's zeros, which a ReLU above leaves,
    /// skipped): dZ's non-zeros are listed once a thread, at its first
    /// claim, and a claim's panels of W^T (N, K) are packed into the panel
    /// layout of a (N, K) kernel in this thread's own buffer, so that the
    /// sparse forward product runs them with dZ as its left operand. Dense:
    /// dZ^T is packed once a thread and the product runs as dA^T = W dZ^T,
    /// reading W as it is (`gemm::input_grad_panels`). Which thread
    /// computes a column changes none of its bits.
    ///
    /// # Safety
    /// `out` points at `dA (B, K)`, shapes were checked
    /// ([`Self::input_grad_shapes`]), and while this runs no one else
    /// touches the columns of the panels claimed from `share`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn input_grad_claims(
        &self,
        out: &SharedOut,
        dz: &[f32],
        w: &[f32],
        below: Derivative<'_, f32>,
        path: Layer1Path,
        (batch, Dims { k, n }): (usize, Dims),
        share: &InputShare,
    ) {
        let wt_layout = self.weight_layout(n, k);
        let nr = Self::NR;
        let panels = wt_layout.panels();
        let zero = vec![0.0; panels * nr];
        let Some(mut jp) = share.claim() else {
            return;
        };
        // The derivative (the Dropouts' masks, then the activation's) on
        // the claimed columns of dA.
        let derivative = |jp: (usize, usize)| {
            let cols = jp.0 * nr..(jp.1 * nr).min(k);
            below.apply_slices((0..batch).map(|i| {
                // SAFETY: row i, columns `cols` of dA are inside it and this
                // thread's alone (claimed).
                let g = unsafe { std::slice::from_raw_parts_mut(out.get().add(i * k + cols.start), cols.len()) };
                (g, i * k + cols.start)
            }));
        };
        with_nonzeros(|csr, _| {
            // SAFETY: I was detected (a SimdBackend<I> exists).
            let row: sparse::CsrRowF32 = |src, idx, val| unsafe { I::csr_row_f32(src, idx, val) };
            let sparse = Self::sparse(path, (batch, n), HIDDEN_FORWARD_MAX_DENSITY, || {
                csr.build_f32(dz, batch, n, row);
                csr.nonzeros()
            });
            if !sparse {
                // Dense: dZ^T packed once a thread, W read as it is.
                with_buffer(&SHARED, |dzt| {
                    let dzt = crate::aligned::window(dzt, batch.div_ceil(nr) * n * nr, false);
                    // SAFETY: I was detected; dzt holds ceil(B / NR) * N * NR
                    // floats and dZ (B, N) was checked.
                    unsafe { I::pack_dzt(dzt, dz, batch, n) };
                    loop {
                        let units = (jp.0 * nr, (jp.1 * nr).min(k));
                        // SAFETY: I was detected; shapes checked (caller);
                        // this thread claimed the columns `units` of dA.
                        unsafe { I::input_grad_panels(out.get(), units, w, dzt, (batch, k, n)) };
                        derivative(jp);
                        match share.claim() {
                            Some(next) => jp = next,
                            None => break,
                        }
                    }
                });
                return;
            }
            with_buffer(&SHARED, |wt| {
                let wt = crate::aligned::window(wt, wt_layout.len(), false);
                loop {
                    for (q, panel) in wt.chunks_mut((n * nr).max(1)).enumerate().take(jp.1).skip(jp.0) {
                        // SAFETY: I was detected; each panel holds N * NR
                        // floats, W was checked against the layout, and q *
                        // NR < K.
                        unsafe { I::pack_wt(panel, q, w, k, n) };
                    }
                    let wt = &*wt;
                    // SAFETY: I was detected; shapes checked (caller); this
                    // thread claimed panels jp of dA and packed those of wt,
                    // the only ones the product reads.
                    with_buffer(&TASK, |part| unsafe {
                        I::forward_sparse(out.get(), jp, csr, wt, &zero, k, false, part)
                    });
                    derivative(jp);
                    match share.claim() {
                        Some(next) => jp = next,
                        None => break,
                    }
                }
            })
        });
    }

    /// The sparse path of a forward product whose left operand is `a` (`m`
    /// rows of `k` floats) and right `w` (`(k, n)`, panels), for
    /// [`Self::forward`]: each task lists `a`'s non-zeros itself, as the
    /// input layer's forward does with pixels.
    fn sparse_rows<'a>(
        a: &'a [f32],
        m: usize,
        k: usize,
        w: &'a [f32],
        n: usize,
        relu: bool,
        path: Layer1Path,
    ) -> impl Fn(*mut f32, (usize, usize), &[f32]) -> bool + Sync + 'a {
        move |out: *mut f32, panels: (usize, usize), bias: &[f32]| {
            with_nonzeros(|csr, _| {
                // SAFETY: I was detected (a SimdBackend<I> exists).
                let row: sparse::CsrRowF32 = |src, idx, val| unsafe { I::csr_row_f32(src, idx, val) };
                if !Self::sparse(path, (m, k), HIDDEN_FORWARD_MAX_DENSITY, || {
                    csr.build_f32(a, m, k, row);
                    csr.nonzeros()
                }) {
                    return false;
                }
                // SAFETY: I was detected; the callers checked the shapes;
                // `out` covers all of the output and this task owns the panel
                // range (see `forward`).
                with_buffer(&TASK, |part| unsafe { I::forward_sparse(out, panels, csr, w, bias, n, relu, part) });
                true
            })
        }
    }

    /// [`Backend::input_backward`] of `x[rows]`, from the batch's pixel
    /// lists `listed` when they were made ahead (`overlap_input_lists`).
    #[allow(clippy::too_many_arguments)]
    fn input_backward_with(
        &self,
        dw: &mut [f32],
        db: &mut [f32],
        (x, rows, listed): (&[u8], &[u32], Option<&Csc>),
        dz: &[f32],
        d: Dims,
        path: Layer1Path,
        update: Option<Update<'_, f32>>,
    ) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        check_rows(x, rows, k);
        check_len("dZ", dz.len(), rows.len() * n);
        let Some(update) = self.weight_grad_prologue(dw, update, db, dz, d) else {
            return;
        };
        let build = |csc: &mut Csc| csc.build(x, rows, k, self.pixels);
        let pack = |dst: &mut [f32], i0: usize| {
            // SAFETY: I was detected; dst holds whole MR x B micro-panels and
            // the rows were checked against x.
            unsafe { I::pack_xt(dst, x, rows, i0, k) }
        };
        let rule = (path, SPARSE_MAX_DENSITY);
        // Lists built once for every task: the product on them, sparse if
        // they say so.
        let from_lists = |csc: &Csc, sparse: bool, dw: &mut [f32], update: Option<Update<'_, f32>>| {
            if sparse {
                self.weight_grad(dw, update, rows.len(), dz, d, rule, Some(csc), build, pack);
            } else {
                self.weight_grad_dense(dw, update, rows.len(), dz, d, pack);
            }
        };
        if let Some(csc) = listed {
            let sparse = Self::sparse(path, (rows.len(), k), SPARSE_MAX_DENSITY, || csc.nonzeros());
            return from_lists(csc, sparse, dw, update);
        }
        if par::threads() < SHARED_LISTS_MIN_THREADS {
            self.weight_grad(dw, update, rows.len(), dz, d, rule, None, build, pack);
            return;
        }
        // Many threads: the pixel lists are built once, in parallel by
        // pixels, and every task reads them (as the forward's lists).
        with_buffer(&SHARED_CSC, |csc| {
            let sparse = Self::sparse(path, (rows.len(), k), SPARSE_MAX_DENSITY, || {
                csc.build_par(x, rows, k, self.pixels);
                csc.nonzeros()
            });
            from_lists(csc, sparse, dw, update);
        });
    }

    /// `dW := X^T dZ` (with its fused update) for the left operand whose
    /// non-zeros `build` files by column into a task's lists, sparse or
    /// dense as `path` and `max_density` decide (see [`Self::sparse`]);
    /// `pack` packs `X^T` for the dense product. `db` and the shapes were
    /// done by [`Self::weight_grad_prologue`].
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(
        &self,
        dw: &mut [f32],
        mut update: Option<Update<'_, f32>>,
        batch: usize,
        dz: &[f32],
        d: Dims,
        (path, max_density): (Layer1Path, f64),
        shared: Option<&Csc>,
        build: impl Fn(&mut Csc) + Sync,
        pack: impl Fn(&mut [f32], usize) + Sync,
    ) {
        let Dims { k, n } = d;
        let chunk = share(self.weight_layout(k, n).panels(), 1) * k * Self::NR;
        // One parallel region: each task lists the non-zeros by column
        // itself (the same lists, so every task takes the same path), or
        // reads the `shared` lists the caller built and chose the sparse
        // path by, and then runs its panels; it returns whether it did.
        let task = |t: usize, dwc: &mut [f32], update: Option<Update<'_, f32>>| {
            with_nonzeros(|_, own| {
                let csc = match shared {
                    Some(csc) => csc,
                    None => {
                        if !Self::sparse(path, (batch, k), max_density, || {
                            build(own);
                            own.nonzeros()
                        }) {
                            return false;
                        }
                        &*own
                    }
                };
                // SAFETY: I was detected; shapes checked by the callers;
                // dwc (and W, its state) hold whole panels; csc was built
                // from this batch.
                with_buffer(&TASK, |scratch| unsafe {
                    I::weight_grad_sparse(dwc, t * chunk / (k * Self::NR), csc, dz, n, k, update, scratch)
                });
                true
            })
        };
        let mut went_sparse = vec![false; dw.len().div_ceil(chunk.max(1))];
        match &mut update {
            None => par::run(dw.chunks_mut(chunk).zip(&mut went_sparse).enumerate().collect(), |(t, (dwc, went))| {
                *went = task(t, dwc, None)
            }),
            Some(u) => par::run(
                dw.chunks_mut(chunk).zip(u.reborrow().into_chunks(chunk)).zip(&mut went_sparse).enumerate().collect(),
                |(t, ((dwc, u), went))| *went = task(t, dwc, Some(u)),
            ),
        }
        if went_sparse.iter().all(|&s| s) {
            return;
        }
        assert!(!went_sparse.contains(&true), "tasks disagreed on the path of one batch");
        self.weight_grad_dense(dw, update, batch, dz, d, pack);
    }
}

thread_local! {
    /// Packing buffers of the calling thread, kept between calls so that no
    /// step allocates or clears them again: per-task panels (`TASK`), and
    /// the `X^T` a whole call shares or a task's panels of `W^T`
    /// (`SHARED`); the sparse path's non-zero lists (`NONZEROS`).
    static TASK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SHARED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static NONZEROS: RefCell<(Csr, Csc)> = RefCell::new(Default::default());
    /// The input layer's per-sample lists when they are built once for all
    /// tasks (`SHARED_LISTS_MIN_THREADS`).
    static SHARED_CSR: RefCell<Csr> = RefCell::new(Default::default());
    /// The input layer's per-pixel lists when they are built once for all
    /// tasks (the same threshold).
    static SHARED_CSC: RefCell<Csc> = RefCell::new(Default::default());
    /// The room of the input layer's per-pixel lists listed ahead
    /// (`overlap_input_lists`) while no batch holds them.
    static PREPARED_CSC: RefCell<Csc> = RefCell::new(Default::default());
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
fn with_buffer<T: Default, R>(key: &'static std::thread::LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut T::default()),
    })
}

/// The panels a claim of [`Backend::hidden_backward_both`]'s input
/// gradient covers: groups of 2 balanced the two threads better than the
/// sparse forward's most efficient 4 (mnist_mlp's epoch 2.5% shorter, 8
/// of 8 alternated runs, docs/performance-log.md); single panels ran the
/// product a third slower.
const PAIRED_CLAIM_PANELS: usize = 2;

/// The panels of a hidden layer's input gradient, in ranges that threads
/// claim in order, the next at `next`.
struct InputShare {
    next: AtomicUsize,
    claims: Vec<(usize, usize)>,
}

impl InputShare {
    /// `panels` in ranges of `size` (the last one shorter).
    fn even(panels: usize, size: usize) -> Self {
        let claims = (0..panels).step_by(size.max(1)).map(|p| (p, (p + size).min(panels))).collect();
        InputShare { next: AtomicUsize::new(0), claims }
    }

    /// The next range of panels not yet claimed.
    fn claim(&self) -> Option<(usize, usize)> {
        self.claims.get(self.next.fetch_add(1, Ordering::Relaxed)).copied()
    }
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
/// of `W`, written in order (the reads stride over `W`, 20 KiB at the
/// tutorial's output shape, which stays in L1). Cache-line aligned: at
/// `K = 512` every row then starts a line, and no vector load of a row
/// straddles two lines.
fn transpose(w: &[f32], k: usize, n: usize) -> AlignedVec<f32> {
    let mut t = AlignedVec::zeroed(k * n);
    for (j, col) in t.chunks_exact_mut(k.max(1)).enumerate() {
        for (o, row) in col.iter_mut().zip(w.chunks_exact(n)) {
            *o = row[j];
        }
    }
    t
}

/// Runs `f(iters)` with `iters` doubling until one call takes at least
/// `seconds`; returns that call's `iters` and seconds.
fn timed(seconds: f64, f: impl Fn(u64) -> f32) -> (u64, f64) {
    let mut iters = 1u64 << 10;
    loop {
        let start = std::time::Instant::now();
        std::hint::black_box(f(std::hint::black_box(iters)));
        let t = start.elapsed().as_secs_f64();
        if t >= seconds {
            return (iters, t);
        }
        iters *= 2;
    }
}

/// How many items of `total` each rayon task takes: an even share per
/// thread, rounded up to a multiple of `unit` (at least `unit`).
fn share(total: usize, unit: usize) -> usize {
    let threads = par::threads().max(1);
    total.div_ceil(threads).div_ceil(unit).max(1) * unit
}

/// The activations the epilogues do not apply (see `shared::activate_rest`),
/// in `I`'s vectors.
fn finish_activation<I: Isa>(h: &mut [f32], act: Activation) {
    assert!(act.applied() != Applied::WithLoss, "softmax is fused with the cross-entropy (output_softmax_xent)");
    if act.applied() == Applied::Elementwise {
        // SAFETY: I was detected (a SimdBackend<I> exists to call this).
        par::run(h.chunks_mut(UPDATE_CHUNK).collect(), |c| unsafe { I::activate(c, act) });
    }
}

impl<I: Isa> SimdBackend<I> {
    /// `H := X W + b` (+ ReLU when `relu`) over every panel, the panels split
    /// evenly over the threads: the same split as the weight gradient's, so
    /// each core reads the part of `W` that it updated itself. `sparse`
    /// builds a task's non-zero lists and says whether it took the sparse
    /// path (it then has written its panels itself).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        h: &mut [f32],
        x: Lhs<'_>,
        w: &[f32],
        b: &[f32],
        d: Dims,
        relu: bool,
        sparse: impl Fn(*mut f32, (usize, usize), &[f32]) -> bool + Sync,
    ) {
        let Dims { k, n } = d;
        let layout = self.weight_layout(k, n);
        check_len("W (panel layout)", w.len(), layout.len());
        check_len("b", b.len(), n);
        if n == 0 || h.is_empty() {
            return;
        }
        let mut bias = b.to_vec();
        bias.resize(layout.panels() * Self::NR, 0.0);
        let per_task = share(layout.panels(), 1);
        let out = SharedOut(h.as_mut_ptr());
        let tasks = (0..layout.panels().div_ceil(per_task)).collect();
        let panels_of = |t: usize| (t * per_task, ((t + 1) * per_task).min(layout.panels()));
        par::run(tasks, |t| {
            if sparse(out.get(), panels_of(t), &bias) {
                return;
            }
            // SAFETY: I was detected; shapes checked by the callers; `out`
            // covers all of H, which outlives the loop, and tasks own
            // disjoint panel ranges, so no column is shared.
            with_buffer(&TASK, |apack| unsafe {
                I::forward_panels(out.get(), panels_of(t), x, w, &bias, (k, n, relu), apack)
            })
        });
    }

    /// `dW := X^T dZ` over every panel from `xt`, the `X^T` micro-panels
    /// `pack` writes (the consecutive panels that fill `dst`, from column
    /// `i0` on), optionally fused with an update.
    fn weight_grad_dense(
        &self,
        dw: &mut [f32],
        update: Option<Update<'_, f32>>,
        batch: usize,
        dz: &[f32],
        d: Dims,
        pack: impl Fn(&mut [f32], usize) + Sync,
    ) {
        let Dims { k, n } = d;
        let chunk = share(self.weight_layout(k, n).panels(), 1) * k * Self::NR;
        with_buffer(&SHARED, |xt| {
            // X^T, packed once for all tasks: k-major micro-panels of MR rows x B.
            let xt = crate::aligned::window(xt, k.div_ceil(I::MR) * I::MR * batch, false);
            // Eight panels a task, so that each batch row's pixels (or
            // columns) for them are read in one go, not one cache line per
            // micro-panel.
            let group = XT_GROUP * I::MR;
            par::run(xt.chunks_mut((group * batch).max(1)).enumerate().collect(), |(g, dst)| pack(dst, g * group));
            let xt = &*xt;
            let task = |t: usize, dwc: &mut [f32], update: Option<Update<'_, f32>>| {
                // SAFETY: I was detected; shapes checked by the callers; dwc
                // (and W, its state) hold whole panels; xt was sized for k and B.
                with_buffer(&TASK, |bpack| unsafe {
                    I::weight_grad_panels(dwc, t * chunk / (k * Self::NR), xt, dz, batch, k, n, bpack, update)
                })
            };
            match update {
                None => par::run(dw.chunks_mut(chunk).enumerate().collect(), |(t, dwc)| task(t, dwc, None)),
                Some(u) => {
                    par::run(dw.chunks_mut(chunk).zip(u.into_chunks(chunk)).enumerate().collect(), |(t, (dwc, u))| {
                        task(t, dwc, Some(u))
                    })
                }
            }
        });
    }

    /// Checks the shapes of a weight gradient in the panel layout (with its
    /// update) and writes `db`. When no product is left (`N` or `K` is 0)
    /// it also finishes the call, applying the update of an all-zero `dW`,
    /// and returns `None`; else it hands the update back.
    fn weight_grad_prologue<'u>(
        &self,
        dw: &mut [f32],
        update: Option<Update<'u, f32>>,
        db: &mut [f32],
        dz: &[f32],
        d: Dims,
    ) -> Option<Option<Update<'u, f32>>> {
        let Dims { k, n } = d;
        check_len("dW (panel layout)", dw.len(), self.weight_layout(k, n).len());
        check_len("db", db.len(), n);
        if let Some(u) = &update {
            check_len("W", u.len(), dw.len());
        }
        if n > 0 {
            column_sums(db, dz, n);
            if k > 0 {
                return Some(update);
            }
        }
        if let Some(u) = update {
            dw.fill(0.0);
            self.update(u, dw);
        }
        None
    }
}

impl<I: Isa> Backend<f32> for SimdBackend<I> {
    fn name(&self) -> &'static str {
        I::NAME
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}x{} register tiles; {}; dW1's pixel lists {})",
            I::NAME,
            I::MR,
            Self::NR,
            crate::caches::blocking().describe(),
            match self.pixels.lister {
                Lister::Table if I::LISTER == Lister::Compress =>
                    "from the transposed batch (faster than filing each image's list except on Zen 4)",
                Lister::Table => "from the transposed batch",
                Lister::Compress => "filed from each image's list",
                Lister::WordScan => "filed from a scan of each image",
            }
        )
    }

    fn fma_peak_gflops(&self, seconds: f64) -> Option<f64> {
        // SAFETY: I was detected (SimdBackend::new).
        let (iters, t) = timed(seconds, |iters| unsafe { I::fma_chains(iters) });
        Some(peak::flops::<I>(iters) / t / 1e9)
    }

    fn ceilings(&self, seconds: f64) -> Option<Ceilings> {
        fn rate<I: Isa, const P: u8>(seconds: f64) -> f64 {
            // SAFETY: I was detected (SimdBackend::new).
            let (iters, t) = timed(seconds, |iters| unsafe { I::probe::<P>(iters) });
            peak::work::<I>(P, iters, (I::MR, I::NV)) / t
        }
        Some(Ceilings {
            fma_peak: self.fma_peak_gflops(seconds)?,
            tile: (I::MR, Self::NR),
            tile_from_l1: rate::<I, { peak::probes::TILE }>(seconds) / 1e9,
            load_per_fma: rate::<I, { peak::probes::LOAD_FMA }>(seconds) / 1e9,
            sqrt_div_ns: 1e9 / rate::<I, { peak::probes::SQRT_DIV }>(seconds),
        })
    }

    fn weight_layout(&self, k: usize, n: usize) -> PanelLayout {
        PanelLayout::panels_of(k, n, Self::NR)
    }

    fn input_forward(
        &self,
        h: &mut [f32],
        Rows { data: x, rows }: Rows<'_, u8>,
        Weights { kernel: w, bias: b }: Weights<'_, f32>,
        act: Activation,
        path: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        check_rows(x, rows, k);
        check_len("H", h.len(), rows.len() * n);
        let relu = act.applied() == Applied::ReluInKernel;
        let row = self.pixels.row;
        if par::threads() >= SHARED_LISTS_MIN_THREADS {
            // Many threads: the batch's lists are built once, in parallel
            // by samples, and every task reads them (see the constant).
            with_buffer(&SHARED_CSR, |csr| {
                let go_sparse = Self::sparse(path, (rows.len(), k), SPARSE_MAX_DENSITY, || {
                    csr.build_par(x, rows, k, row);
                    csr.nonzeros()
                });
                let csr = &*csr;
                let sparse = |out: *mut f32, panels: (usize, usize), bias: &[f32]| {
                    if go_sparse {
                        // SAFETY: I was detected; shapes checked; `out`
                        // covers all of H and this task owns the panel range
                        // (see `forward`); csr was built from this batch.
                        with_buffer(&TASK, |part| unsafe {
                            I::forward_sparse(out, panels, csr, w, bias, n, relu, part)
                        });
                    }
                    go_sparse
                };
                self.forward(h, Lhs::Pixels { x, rows }, w, b, d, relu, sparse);
            });
            finish_activation::<I>(h, act);
            return;
        }
        // Each task lists the non-zero pixels of the whole batch itself (the
        // same lists, so every task takes the same path) and then runs its
        // panels; no task waits on another's lists or reads them from
        // another core's cache.
        let sparse = |out: *mut f32, panels: (usize, usize), bias: &[f32]| {
            with_nonzeros(|csr, _| {
                if !Self::sparse(path, (rows.len(), k), SPARSE_MAX_DENSITY, || {
                    csr.build(x, rows, k, row);
                    csr.nonzeros()
                }) {
                    return false;
                }
                // SAFETY: I was detected; shapes checked; `out` covers all
                // of H and this task owns the panel range (see `forward`).
                with_buffer(&TASK, |part| unsafe { I::forward_sparse(out, panels, csr, w, bias, n, relu, part) });
                true
            })
        };
        self.forward(h, Lhs::Pixels { x, rows }, w, b, d, relu, sparse);
        finish_activation::<I>(h, act);
    }

    fn input_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        Rows { data: x, rows }: Rows<'_, u8>,
        dz: &[f32],
        path: Layer1Path,
        d: Dims,
    ) {
        self.input_backward_with(dw, db, (x, rows, None), dz, d, path, update);
    }

    fn overlap_input_lists<'x>(
        &self,
        pixels: Rows<'x, u8>,
        k: usize,
        path: Layer1Path,
        work: &mut dyn FnMut(),
    ) -> InputLists<'x> {
        // Below the shared lists' thread count every task of the input
        // backward would list the whole batch itself; here one other
        // thread lists it once, while this one runs `work`. Not when the
        // cores are far apart (`par::Placement`): reading the lists from
        // the other core's cache then costs more than listing the batch
        // again in each task (docs/performance-log.md, 2026-12-07: the
        // tutorial's epoch 0.160 -> 0.150 s far; near, listing in each
        // task is the slower by 4%).
        let (x, rows) = (pixels.data, pixels.rows);
        let threads = par::threads();
        if !(2..SHARED_LISTS_MIN_THREADS).contains(&threads)
            || path == Layer1Path::Dense
            || rows.is_empty()
            || k == 0
            || par::placement() == par::Placement::Far
        {
            work();
            return InputLists { x: pixels, k, csc: None };
        }
        check_rows(x, rows, k);
        let mut csc = PREPARED_CSC.with(|c| std::mem::take(&mut *c.borrow_mut()));
        rayon::in_place_scope(|s| {
            s.spawn(|_| csc.build(x, rows, k, self.pixels));
            work();
        });
        InputLists { x: pixels, k, csc: Some(csc) }
    }

    fn input_backward_listed(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        lists: InputLists<'_>,
        dz: &[f32],
        path: Layer1Path,
        d: Dims,
    ) {
        let InputLists { x: Rows { data: x, rows }, k, csc } = lists;
        let csc = csc.filter(|_| k == d.k);
        self.input_backward_with(dw, db, (x, rows, csc.as_ref()), dz, d, path, update);
        let Some(csc) = csc else { return };
        // The lists' room, for the next batch.
        PREPARED_CSC.with(|c| *c.borrow_mut() = csc);
    }

    fn hidden_forward(
        &self,
        h: &mut [f32],
        a: &[f32],
        Weights { kernel: w, bias: b }: Weights<'_, f32>,
        act: Activation,
        path: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        let batch = h.len().checked_div(n).unwrap_or(a.len() / k.max(1));
        check_len("H", h.len(), batch * n);
        check_len("A", a.len(), batch * k);
        let relu = act.applied() == Applied::ReluInKernel;
        self.forward(h, Lhs::Rows { a, m: batch }, w, b, d, relu, Self::sparse_rows(a, batch, k, w, n, relu, path));
        finish_activation::<I>(h, act);
    }

    fn hidden_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        a: &[f32],
        dz: &[f32],
        path: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        let batch = dz.len().checked_div(n).unwrap_or(a.len() / k.max(1));
        check_len("dZ", dz.len(), batch * n);
        check_len("A", a.len(), batch * k);
        let Some(update) = self.weight_grad_prologue(dw, update, db, dz, d) else {
            return;
        };
        // SAFETY: I was detected (a SimdBackend<I> exists).
        let row: sparse::CsrRowF32 = |src, idx, val| unsafe { I::csr_row_f32(src, idx, val) };
        // A^T's micro-panels: row-major for the sparse path's column lists,
        // k-major for the dense product.
        // SAFETY: I was detected; dst is one MR x B micro-panel, A was
        // checked to be (B, K), and i0 < K (a panel per MR columns).
        let pack = |dst: &mut [f32], i0: usize| unsafe { I::pack_at(dst, a, batch, i0, k) };
        let build = |csc: &mut Csc| csc.build_f32((batch, k, I::MR), pack, row);
        let pack_kmajor = |dst: &mut [f32], i0: usize| I::pack_at_kmajor(dst, a, batch, i0, k);
        self.weight_grad(dw, update, batch, dz, d, (path, HIDDEN_GRAD_MAX_DENSITY), None, build, pack_kmajor);
    }

    fn hidden_backward_input(
        &self,
        da: &mut [f32],
        dz: &[f32],
        w: &[f32],
        below: Derivative<'_, f32>,
        path: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        let Some(batch) = self.input_grad_shapes(da, dz, w, below.out, d) else {
            return;
        };
        // One task a thread, each claiming an equal share of dA's columns.
        let panels = self.weight_layout(d.n, d.k).panels();
        let share = InputShare::even(panels, share(panels, 1));
        let out = SharedOut(da.as_mut_ptr());
        par::run((0..share.claims.len()).collect(), |_| {
            // SAFETY: shapes checked above; `out` is dA, whose columns each
            // task writes only for the panels it claims from `share`.
            unsafe { self.input_grad_claims(&out, dz, w, below, path, (batch, d), &share) }
        });
    }

    fn hidden_backward_both(
        &self,
        input: InputGrad<'_, f32>,
        g: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        a: &[f32],
        path: Layer1Path,
        d: Dims,
    ) {
        let InputGrad { da, dz, w, below } = input;
        if !par::runs_side_by_side() {
            self.hidden_backward_input(da, dz, w, below, path, d);
            self.hidden_backward(g, update, a, dz, path, d);
            return;
        }
        let Some(batch) = self.input_grad_shapes(da, dz, w, below.out, d) else {
            self.hidden_backward(g, update, a, dz, path, d);
            return;
        };
        // The input gradient starts alone on one thread and the weight
        // gradient (with the update) on the other, which then claims what
        // is left of the input gradient's columns: at mnist_mlp's
        // densities the input gradient took 250 us a step against 170
        // (AMD Zen 5), and 230 with the help.
        let share = InputShare::even(self.weight_layout(d.n, d.k).panels(), PAIRED_CLAIM_PANELS);
        let out = SharedOut(da.as_mut_ptr());
        let claims = || {
            let _flushed = Flushed::new();
            // SAFETY: shapes checked above; `out` is dA, whose columns each
            // side writes only for the panels it claims from `share`.
            unsafe { self.input_grad_claims(&out, dz, w, below, path, (batch, d), &share) }
        };
        side_by_side(claims, || {
            self.hidden_backward(g, update, a, dz, path, d);
            claims();
        });
    }

    fn output_softmax_xent(
        &self,
        p: &mut [f32],
        dz: &mut [f32],
        h: &[f32],
        Weights { kernel: w, bias: b }: Weights<'_, f32>,
        Rows { data: labels, rows }: Rows<'_, u8>,
        d: Dims,
    ) -> XentStats<f32> {
        let _flushed = Flushed::new();
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
        let blocks = p
            .chunks_mut(LAYER2_ROWS * n)
            .zip(dz.chunks_mut(LAYER2_ROWS * n))
            .zip(h.chunks(LAYER2_ROWS * k))
            .zip(rows.chunks(LAYER2_ROWS))
            .zip(per_row.chunks_mut(LAYER2_ROWS));
        par::run(blocks.collect(), |((((pc, dzc), hc), rc), out)| {
            // The softmax's exponentials underflow: flushed here too.
            let _flushed = Flushed::new();
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

    fn output_softmax(&self, p: &mut [f32], h: &[f32], Weights { kernel: w, bias: b }: Weights<'_, f32>, d: Dims) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        let Some(batch) = output_rows(p.len(), h.len(), b.len(), d) else { return };
        check_len("W", w.len(), k * n);
        let wt = transpose(w, k, n);
        if k == 0 || batch <= LAYER2_ROWS {
            // SAFETY: I was detected; shapes checked above.
            unsafe { I::logits(p, h, &wt, b, k, n) };
            return softmax_rows(p, n);
        }
        // Blocks of rows in parallel, as `output_softmax_xent` runs them.
        let blocks = p.chunks_mut(LAYER2_ROWS * n).zip(h.chunks(LAYER2_ROWS * k));
        par::run(blocks.collect(), |(pc, hc)| {
            // Flushed on this worker thread too, as for training.
            let _flushed = Flushed::new();
            // SAFETY: I was detected; the blocks are whole rows of the
            // shapes checked above.
            unsafe { I::logits(pc, hc, &wt, b, k, n) };
            softmax_rows(pc, n);
        });
    }

    fn output_backward(&self, Grads { kernel: dw, bias: db }: Grads<'_, f32>, h: &[f32], dz: &[f32], d: Dims) {
        let _flushed = Flushed::new();
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
        par::run(dw.chunks_mut((rows_per_task * n).max(1)).enumerate().collect(), |(t, dwc)| {
            // SAFETY: I was detected; shapes checked above; dwc is rows
            // t * rows_per_task .. of dW.
            unsafe { I::weight_grad_rows(dwc, t * rows_per_task, h, dz, k, n) };
        });
    }

    fn output_backward_input(&self, dh: &mut [f32], dz: &[f32], w: &[f32], below: Derivative<'_, f32>, d: Dims) {
        let (act, h) = (below.act, below.out);
        let _flushed = Flushed::new();
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
        // ReLU's derivative inside the product, unless Dropouts' masks come
        // first (`Derivative::apply`).
        let mask = act.applied() == Applied::ReluInKernel && !below.has_dropouts();
        par::run(dh.chunks_mut(chunk * k).zip(h.chunks(chunk * k)).enumerate().collect(), |(t, (dhc, hc))| {
            let rows = dhc.len() / k;
            let dzc = &dz[t * chunk * n..(t * chunk + rows) * n];
            // SAFETY: I was detected; shapes checked above.
            unsafe { I::input_grad_rows(dhc, dzc, &wt, hc, (k, n, mask)) };
            if !mask {
                below.apply(dhc, t * chunk * k);
            }
        });
    }

    fn update(&self, u: Update<'_, f32>, g: &[f32]) {
        let _flushed = Flushed::new();
        check_len("g", g.len(), u.len());
        par::run(u.into_chunks(UPDATE_CHUNK).into_iter().zip(g.chunks(UPDATE_CHUNK)).collect(), |(u, g)| {
            // SAFETY: I was detected; the chunks have equal lengths.
            unsafe { I::update(u, g) }
        });
    }
}

/// How the sparse weight gradient of layer 1 lists the batch's pixels
/// ([`Csc::build`]): as the instruction set's packing measured fastest,
/// except that AVX-512's filing of each image's compressed list is
/// fastest only on AMD Zen 4 (family 25); on Intel Sapphire Rapids and AMD
/// Zen 5, listing the transposed batch is (docs/performance-log.md,
/// 2026-12-02, e330d4e and 2026-12-03, 3f7f3f5), and so on any
/// CPU not measured yet. Either way the lists, and so every result bit,
/// are the same (tested).
fn csc_lister<I: Isa>() -> Lister {
    if I::LISTER == Lister::Compress && crate::caches::cpu() != Cpu::Amd(ZEN4_FAMILY) {
        Lister::Table
    } else {
        I::LISTER
    }
}

/// AMD's CPUID family of Zen 3 and Zen 4 (only Zen 4 has AVX-512).
const ZEN4_FAMILY: u32 = 25;
