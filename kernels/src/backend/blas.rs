//! The BLAS backend (cargo feature `blas`): every product is one `sgemm` of
//! the system's OpenBLAS (through `cblas`, linked by `blas-src` +
//! `openblas-src` with its `system` feature), and the epilogues are separate
//! passes: the bias is broadcast into C, `sgemm` runs with `beta = 1`, then
//! the activation (or softmax) pass. The input layer's u8 pixels are
//! gathered and converted into one per-call `(B, K)` buffer, since BLAS
//! reads only floats. Every kernel is row-major here (the panel width is `N`).
//!
//! OpenBLAS runs its own threads: each call sets their number to the
//! threads its caller may use (the current rayon pool's size; one inside a
//! side of `side_by_side`). Its results may depend on that number (its
//! splits are its own), unlike kiln's own backends.

use crate::denormals::Flushed;
use crate::shared::{check_len, check_rows, column_sums, output_rows, pixel_table, softmax_rows, softmax_xent_rows};
use crate::{
    scalar, Activation, Applied, Backend, Derivative, Dims, Grads, Layer1Path, Rows, Update, Weights, XentStats,
};
use cblas::{Layout, Transpose};
use std::ffi::{c_char, c_int, CStr};
use std::sync::{Mutex, PoisonError};

// Link the library that `blas-src` selects.
extern crate blas_src;

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

/// The BLAS backend (see the module docs).
pub(crate) struct Blas {
    /// The thread count last given to OpenBLAS, held while it is changed, so
    /// that no call starts between another's check and its change (the two
    /// sides of `side_by_side` call at once).
    threads: Mutex<usize>,
}

/// The one instance.
pub(crate) fn backend() -> &'static Blas {
    static BLAS: Blas = Blas { threads: Mutex::new(0) };
    &BLAS
}

/// Which OpenBLAS build and kernel core run, e.g. `OpenBLAS 0.3.21 ... (core
/// Haswell)`, with a warning when it fell back to a pre-AVX core.
pub(crate) fn describe() -> String {
    // SAFETY: both functions return pointers to static NUL-terminated strings
    // owned by OpenBLAS (or null, handled).
    let (core, config) = unsafe {
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (text(openblas_get_corename()), text(openblas_get_config()))
    };
    let slow = [
        "prescott",
        "core2",
        "nehalem",
        "penryn",
        "dunnington",
        "atom",
        "katmai",
        "coppermine",
        "northwood",
        "banias",
        "unknown",
    ];
    let mut s = format!("{} (core {core})", config.trim());
    if slow.iter().any(|c| core.eq_ignore_ascii_case(c)) {
        s.push_str(&format!(
            "; warning: OpenBLAS did not recognise this CPU and runs its slow {core} kernels \
             (set OPENBLAS_CORETYPE=Haswell, or SkylakeX with AVX-512, before starting)"
        ));
    }
    s
}

fn dim(v: usize) -> i32 {
    i32::try_from(v).expect("matrix dimension exceeds BLAS's 32-bit range")
}

impl Blas {
    /// Matches OpenBLAS's thread count to the threads this caller may use.
    fn sync_threads(&self) {
        let want = crate::par::threads().max(1);
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        if *threads != want {
            // SAFETY: a plain setter of OpenBLAS's global thread count.
            unsafe { openblas_set_num_threads(want as c_int) };
            *threads = want;
        }
    }

    /// `C (m, n) := alpha op(A) op(B) + beta C`, row-major, checked shapes.
    #[allow(clippy::too_many_arguments)]
    fn sgemm(&self, ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
        if m == 0 || n == 0 {
            return;
        }
        let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
        check_len("A", a.len(), m * k);
        check_len("B", b.len(), k * n);
        check_len("C", c.len(), m * n);
        if k == 0 {
            // BLAS with k = 0 scales C by beta (and reads it); do the same.
            c.iter_mut().for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
            return;
        }
        self.sync_threads();
        let t = |yes: bool| if yes { Transpose::Ordinary } else { Transpose::None };
        // SAFETY: the slices hold (m, k), (k, n) and (m, n) elements with the
        // leading dimensions given (checked above); cblas_sgemm reads and
        // writes nothing else.
        unsafe {
            cblas::sgemm(
                Layout::RowMajor,
                t(ta),
                t(tb),
                dim(m),
                dim(n),
                dim(k),
                /* alpha */ 1.0,
                a,
                dim(lda),
                b,
                dim(ldb),
                beta,
                c,
                dim(n),
            )
        }
    }
}

/// `X = x[rows] / 255` gathered into a `(B, K)` buffer.
fn gather(x: &[u8], rows: &[u32], k: usize) -> Vec<f32> {
    let lut = pixel_table::<f32>();
    let mut out = Vec::with_capacity(rows.len() * k);
    for &r in rows {
        out.extend(x[r as usize * k..(r as usize + 1) * k].iter().map(|&p| lut[usize::from(p)]));
    }
    out
}

/// Every row of `c (B, N)` set to `b`.
fn broadcast(c: &mut [f32], b: &[f32]) {
    for row in c.chunks_exact_mut(b.len().max(1)) {
        row.copy_from_slice(b);
    }
}

impl Blas {
    /// `H := act(A W + b)`, `A (B, K)`, `W (K, N)` row-major.
    fn forward(&self, h: &mut [f32], a: &[f32], w: &[f32], bias: &[f32], d: Dims, act: Activation) {
        let Dims { k, n } = d;
        assert!(act.applied() != Applied::WithLoss, "softmax is fused with the cross-entropy (output_softmax_xent)");
        check_len("W", w.len(), k * n);
        check_len("b", bias.len(), n);
        let batch = h.len().checked_div(n).unwrap_or(a.len() / k.max(1));
        check_len("H", h.len(), batch * n);
        check_len("A", a.len(), batch * k);
        broadcast(h, bias);
        self.sgemm(false, false, batch, n, k, a, w, 1.0, h);
        for v in h.iter_mut() {
            *v = act.apply(*v);
        }
    }

    /// `dW := A^T dZ`, `db`, then the update if any.
    fn weight_grad(
        &self,
        dw: &mut [f32],
        db: &mut [f32],
        a: &[f32],
        dz: &[f32],
        d: Dims,
        update: Option<Update<'_, f32>>,
    ) {
        let Dims { k, n } = d;
        check_len("db", db.len(), n);
        check_len("dW", dw.len(), k * n);
        if let Some(batch) = dz.len().checked_div(n) {
            check_len("A", a.len(), batch * k);
            column_sums(db, dz, n);
            self.sgemm(true, false, k, n, batch, a, dz, 0.0, dw);
        }
        if let Some(u) = update {
            scalar::update(u, dw);
        }
    }

    /// `dA := (dZ W^T) * act'(A)`.
    fn input_grad(&self, da: &mut [f32], dz: &[f32], w: &[f32], below: Derivative<'_, f32>, d: Dims) {
        let a = below.out;
        let Dims { k, n } = d;
        check_len("W", w.len(), k * n);
        check_len("dA", da.len(), a.len());
        if k == 0 {
            return;
        }
        let batch = a.len() / k;
        check_len("dZ", dz.len(), batch * n);
        self.sgemm(false, true, batch, k, n, dz, w, 0.0, da);
        below.apply(da, 0);
    }
}

impl Backend<f32> for Blas {
    fn name(&self) -> &'static str {
        "blas"
    }

    fn describe(&self) -> String {
        format!("blas: {}", describe())
    }

    fn input_forward(
        &self,
        h: &mut [f32],
        Rows { data: x, rows }: Rows<'_, u8>,
        Weights { kernel: w, bias: b }: Weights<'_, f32>,
        act: Activation,
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        check_rows(x, rows, d.k);
        check_len("H", h.len(), rows.len() * d.n);
        self.forward(h, &gather(x, rows, d.k), w, b, d, act);
    }

    fn input_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        Rows { data: x, rows }: Rows<'_, u8>,
        dz: &[f32],
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        check_rows(x, rows, d.k);
        check_len("dZ", dz.len(), rows.len() * d.n);
        self.weight_grad(dw, db, &gather(x, rows, d.k), dz, d, update);
    }

    fn hidden_forward(
        &self,
        h: &mut [f32],
        a: &[f32],
        Weights { kernel: w, bias: b }: Weights<'_, f32>,
        act: Activation,
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        self.forward(h, a, w, b, d, act);
    }

    fn hidden_backward(
        &self,
        Grads { kernel: dw, bias: db }: Grads<'_, f32>,
        update: Option<Update<'_, f32>>,
        a: &[f32],
        dz: &[f32],
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        self.weight_grad(dw, db, a, dz, d, update);
    }

    fn hidden_backward_input(
        &self,
        da: &mut [f32],
        dz: &[f32],
        w: &[f32],
        below: Derivative<'_, f32>,
        _: Layer1Path,
        d: Dims,
    ) {
        let _flushed = Flushed::new();
        self.input_grad(da, dz, w, below, d);
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
        check_len("P", p.len(), batch * n);
        check_len("dZ", dz.len(), batch * n);
        check_len("b", b.len(), n);
        broadcast(p, b);
        self.sgemm(false, false, batch, n, k, h, w, 1.0, p);
        softmax_xent_rows(p, dz, labels, rows, n)
    }

    fn output_softmax(&self, p: &mut [f32], h: &[f32], Weights { kernel: w, bias: b }: Weights<'_, f32>, d: Dims) {
        let _flushed = Flushed::new();
        let Dims { k, n } = d;
        let Some(batch) = output_rows(p.len(), h.len(), b.len(), d) else { return };
        broadcast(p, b);
        self.sgemm(false, false, batch, n, k, h, w, 1.0, p);
        softmax_rows(p, n);
    }

    fn output_backward(&self, Grads { kernel: dw, bias: db }: Grads<'_, f32>, h: &[f32], dz: &[f32], d: Dims) {
        let _flushed = Flushed::new();
        self.weight_grad(dw, db, h, dz, d, None);
    }

    fn output_backward_input(&self, dh: &mut [f32], dz: &[f32], w: &[f32], below: Derivative<'_, f32>, d: Dims) {
        let _flushed = Flushed::new();
        self.input_grad(dh, dz, w, below, d);
    }

    fn update(&self, u: Update<'_, f32>, g: &[f32]) {
        let _flushed = Flushed::new();
        scalar::update(u, g);
    }
}
