//! The BLAS backend (cargo feature `blas`): every product is one `sgemm` of
//! the system's OpenBLAS (through `cblas`, linked by `blas-src` +
//! `openblas-src` with its `system` feature), and the epilogues are separate
//! passes: the bias is broadcast into C, `sgemm` runs with `beta = 1`, then a
//! ReLU (or softmax) pass. Layer 1's u8 input is gathered and converted into
//! one per-call `(B, K)` buffer, since BLAS reads only floats.
//!
//! OpenBLAS runs its own threads: each call sets their number to the
//! current rayon pool's size. Its results may depend on that number (its
//! splits are its own), unlike kiln's own backends.

use crate::scalar::{self, check_len, check_rows, column_sums, pixel_table, softmax_xent_rows};
use crate::{Backend, Dims, RmsProp, XentStats};
use cblas::{Layout, Transpose};
use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

// Link the library that `blas-src` selects.
extern crate blas_src;

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

/// The BLAS backend (see the module docs).
pub(crate) struct Blas {
    threads: AtomicUsize,
}

/// The one instance.
pub(crate) fn backend() -> &'static Blas {
    static BLAS: Blas = Blas { threads: AtomicUsize::new(0) };
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
    /// Matches OpenBLAS's thread count to the current rayon pool.
    fn sync_threads(&self) {
        let want = rayon::current_num_threads().max(1);
        if self.threads.swap(want, Ordering::Relaxed) != want {
            // SAFETY: a plain setter of OpenBLAS's global thread count.
            unsafe { openblas_set_num_threads(want as c_int) };
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

impl Backend<f32> for Blas {
    fn name(&self) -> &'static str {
        "blas"
    }

    fn describe(&self) -> String {
        format!("blas: {}", describe())
    }

    fn dense_relu_forward_u8(&self, h: &mut [f32], x: &[u8], rows: &[u32], w: &[f32], b: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_rows(x, rows, k);
        check_len("H", h.len(), rows.len() * n);
        check_len("W", w.len(), k * n);
        check_len("b", b.len(), n);
        broadcast(h, b);
        self.sgemm(false, false, rows.len(), n, k, &gather(x, rows, k), w, 1.0, h);
        h.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
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
        check_len("P", p.len(), batch * n);
        check_len("dZ", dz.len(), batch * n);
        check_len("b", b.len(), n);
        broadcast(p, b);
        self.sgemm(false, false, batch, n, k, h, w, 1.0, p);
        softmax_xent_rows(p, dz, labels, rows, n)
    }

    fn dense_backward(&self, dw: &mut [f32], db: &mut [f32], h: &[f32], dz: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_len("db", db.len(), n);
        check_len("dW", dw.len(), k * n);
        if n == 0 {
            return;
        }
        let batch = dz.len() / n;
        column_sums(db, dz, n);
        self.sgemm(true, false, k, n, batch, h, dz, 0.0, dw);
    }

    fn dense_backward_u8(&self, dw: &mut [f32], db: &mut [f32], x: &[u8], rows: &[u32], dz: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_rows(x, rows, k);
        check_len("dZ", dz.len(), rows.len() * n);
        self.dense_backward(dw, db, &gather(x, rows, k), dz, d);
    }

    fn relu_backward_input(&self, dh: &mut [f32], dz: &[f32], w: &[f32], h: &[f32], d: Dims) {
        let Dims { k, n } = d;
        check_len("dH", dh.len(), h.len());
        if k == 0 {
            return;
        }
        let batch = h.len() / k;
        self.sgemm(false, true, batch, k, n, dz, w, 0.0, dh);
        for (g, &hv) in dh.iter_mut().zip(h) {
            *g = if hv > 0.0 { *g } else { 0.0 };
        }
    }

    fn rmsprop(&self, w: &mut [f32], g: &[f32], v: &mut [f32], opt: RmsProp) {
        scalar::rmsprop(w, g, v, opt);
    }
}
