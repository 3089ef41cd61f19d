//! Per instruction set, the thin `#[target_feature]` entry points that
//! instantiate the generic bodies of `gemm.rs`, `sparse.rs`, `small.rs`,
//! `optim.rs` and `peak.rs` with that set enabled ([`Isa`]; one
//! `isa_entry_points!` line per set).
//!
//! The entry points are reachable only through the SIMD backend
//! (`backend/simd.rs`), which checks every shape in safe code before any
//! of them runs, and which `crate::select` builds only after detecting the
//! instruction set.

use crate::denormals::Flushed;
use crate::gemm::Lhs;
use crate::simd::Simd;
use crate::sparse::{self, Csc, Csr};
use crate::{gemm, optim, peak, small, Activation, Update};

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
        x: Lhs<'_>,
        w: &[f32],
        bias: &[f32],
        knr: (usize, usize, bool),
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
        update: Option<Update<'_, f32>>,
    );
    unsafe fn pack_wt(panel: &mut [f32], q: usize, w: &[f32], k: usize, n: usize);
    unsafe fn pack_dzt(dst: &mut [f32], dz: &[f32], batch: usize, n: usize);
    unsafe fn input_grad_panels(
        da: *mut f32,
        units: (usize, usize),
        w: &[f32],
        dzt: &[f32],
        bkn: (usize, usize, usize),
    );
    unsafe fn pack_at(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize);
    unsafe fn pack_xt(dst: &mut [f32], x: &[u8], rows: &[u32], i0: usize, k: usize);
    fn pack_at_kmajor(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize);
    unsafe fn logits(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize);
    unsafe fn input_grad_rows(dh: &mut [f32], dz: &[f32], wt: &[f32], h: &[f32], knm: (usize, usize, bool));
    unsafe fn weight_grad_rows(dw: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize);
    unsafe fn update(u: Update<'_, f32>, g: &[f32]);
    /// `shared::activate_rest`, its loop compiled to this set's vectors.
    unsafe fn activate(h: &mut [f32], act: Activation);
    unsafe fn fma_chains(iters: u64) -> f32;
    unsafe fn probe<const P: u8>(iters: u64) -> f32;
    /// The sparse forward of `G` panels from `jp` on (see
    /// `sparse::forward_group`).
    unsafe fn forward_group<const G: usize>(
        h: *mut f32,
        jp: usize,
        csr: &Csr,
        w: &[f32],
        bias: &[f32],
        nrelu: (usize, bool),
        part: &mut Vec<f32>,
    );
    /// Sparse `H[:, panels] := X W + b` (+ ReLU) for one task, a group of
    /// panels at a time (`sparse::forward_groups`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_sparse(
        h: *mut f32,
        panels: (usize, usize),
        csr: &Csr,
        w: &[f32],
        bias: &[f32],
        n: usize,
        relu: bool,
        part: &mut Vec<f32>,
    ) {
        sparse::forward_groups(panels, |jp, g| {
            let nrelu = (n, relu);
            // SAFETY: forwarded contract (`forward_group`'s, for each group
            // of the task's panels).
            unsafe {
                match g {
                    sparse::PG => Self::forward_group::<{ sparse::PG }>(h, jp, csr, w, bias, nrelu, part),
                    3 => Self::forward_group::<3>(h, jp, csr, w, bias, nrelu, part),
                    2 => Self::forward_group::<2>(h, jp, csr, w, bias, nrelu, part),
                    _ => Self::forward_group::<1>(h, jp, csr, w, bias, nrelu, part),
                }
            }
        })
    }
    /// The non-zero pixels of one row (see `sparse::csr_row`).
    unsafe fn csr_row(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize;
    /// The non-zero values of one f32 row (see `sparse::csr_row_f32`).
    unsafe fn csr_row_f32(src: &[f32], idx: &mut [u32], val: &mut [f32]) -> usize;
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_sparse(
        dw: &mut [f32],
        jp0: usize,
        csc: &Csc,
        dz: &[f32],
        n: usize,
        k: usize,
        update: Option<Update<'_, f32>>,
        scratch: &mut Vec<f32>,
    );
}

/// Implements [`Isa`] for `$isa`: each entry point is the generic body
/// compiled with `$features` enabled (`$gv`: the `V` of
/// `small::weight_grad_rows`). (A macro only because the wrappers differ
/// in nothing but the type and the feature string.)
macro_rules! isa_entry_points {
    ($isa:ty, $features:literal, $mr:expr, $nv:expr, $gv:expr) => {
        // The edge-tile buffers (`[f32; MAX_TILE]`) hold this ISA's whole
        // tile: a compile error, not an out-of-bounds write, when a tile
        // grows past them.
        const _: () = assert!(
            $mr * $nv * <$isa as Simd>::LANES <= crate::params::MAX_TILE,
            "MAX_TILE is smaller than this instruction set's MR * NR"
        );
        impl Isa for $isa {
            const MR: usize = $mr;
            const NV: usize = $nv;
            #[target_feature(enable = $features)]
            unsafe fn forward_panels(
                h: *mut f32,
                panels: (usize, usize),
                x: Lhs<'_>,
                w: &[f32],
                bias: &[f32],
                knr: (usize, usize, bool),
                apack: &mut Vec<f32>,
            ) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::forward_panels::<Self, { $mr }, { $nv }>(h, panels, x, w, bias, knr, apack) }
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
                update: Option<Update<'_, f32>>,
            ) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs); the CPU runs Self.
                unsafe {
                    optim::with_rule!(Self, update, |u| gemm::weight_grad_panels::<Self, { $mr }, { $nv }, _>(
                        dw, jp0, xt, dz, batch, k, n, bpack, u
                    ))
                }
            }
            #[target_feature(enable = $features)]
            unsafe fn pack_wt(panel: &mut [f32], q: usize, w: &[f32], k: usize, n: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::pack_wt::<Self, { $nv }>(panel, q, w, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn pack_dzt(dst: &mut [f32], dz: &[f32], batch: usize, n: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::pack_dzt::<Self, { $nv }>(dst, dz, batch, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn input_grad_panels(
                da: *mut f32,
                units: (usize, usize),
                w: &[f32],
                dzt: &[f32],
                bkn: (usize, usize, usize),
            ) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::input_grad_panels::<Self, { $mr }, { $nv }>(da, units, w, dzt, bkn) }
            }
            #[target_feature(enable = $features)]
            unsafe fn pack_at(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::pack_at::<Self, { $mr }>(dst, a, batch, i0, k) }
            }
            #[target_feature(enable = $features)]
            unsafe fn pack_xt(dst: &mut [f32], x: &[u8], rows: &[u32], i0: usize, k: usize) {
                // SAFETY: forwarded contract (trait docs).
                unsafe { gemm::pack_xt::<Self, { $mr }>(dst, x, rows, i0, k) }
            }
            fn pack_at_kmajor(dst: &mut [f32], a: &[f32], batch: usize, i0: usize, k: usize) {
                gemm::pack_at_kmajor::<{ $mr }>(dst, a, batch, i0, k)
            }
            #[target_feature(enable = $features)]
            unsafe fn logits(p: &mut [f32], h: &[f32], wt: &[f32], b: &[f32], k: usize, n: usize) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::logits::<Self>(p, h, wt, b, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn input_grad_rows(dh: &mut [f32], dz: &[f32], wt: &[f32], h: &[f32], knm: (usize, usize, bool)) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::input_grad_rows::<Self>(dh, dz, wt, h, knm) }
            }
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_rows(dw: &mut [f32], k0: usize, h: &[f32], dz: &[f32], k: usize, n: usize) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { small::weight_grad_rows::<Self, { $gv }>(dw, k0, h, dz, k, n) }
            }
            #[target_feature(enable = $features)]
            unsafe fn activate(h: &mut [f32], act: Activation) {
                crate::shared::activate_rest(h, act)
            }
            #[target_feature(enable = $features)]
            unsafe fn update(u: Update<'_, f32>, g: &[f32]) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { optim::update::<Self>(u, g) }
            }
            #[target_feature(enable = $features)]
            unsafe fn fma_chains(iters: u64) -> f32 {
                // SAFETY: forwarded contract (trait docs).
                unsafe { peak::fma_chains::<Self>(iters) }
            }
            #[target_feature(enable = $features)]
            unsafe fn probe<const P: u8>(iters: u64) -> f32 {
                // SAFETY: forwarded contract (trait docs).
                unsafe { peak::probe::<Self, { $mr }, { $nv }, P>(iters) }
            }
            #[target_feature(enable = $features)]
            unsafe fn forward_group<const G: usize>(
                h: *mut f32,
                jp: usize,
                csr: &Csr,
                w: &[f32],
                bias: &[f32],
                nrelu: (usize, bool),
                part: &mut Vec<f32>,
            ) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::forward_group::<Self, { $nv }, G>(h, jp, csr, w, bias, nrelu, part) }
            }
            #[target_feature(enable = $features)]
            unsafe fn csr_row(src: &[u8], idx: &mut [u32], val: &mut [f32]) -> usize {
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::csr_row::<Self>(src, idx, val) }
            }
            #[target_feature(enable = $features)]
            unsafe fn csr_row_f32(src: &[f32], idx: &mut [u32], val: &mut [f32]) -> usize {
                // SAFETY: forwarded contract (trait docs).
                unsafe { sparse::csr_row_f32::<Self>(src, idx, val) }
            }
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_sparse(
                dw: &mut [f32],
                jp0: usize,
                csc: &Csc,
                dz: &[f32],
                n: usize,
                k: usize,
                update: Option<Update<'_, f32>>,
                scratch: &mut Vec<f32>,
            ) {
                // On whichever thread runs this task (see `denormals`).
                let _flushed = Flushed::new();
                // SAFETY: forwarded contract (trait docs).
                unsafe {
                    optim::with_rule!(Self, update, |u| sparse::weight_grad_sparse::<Self, { $nv }, _>(
                        dw, jp0, csc, dz, n, k, u, scratch
                    ))
                }
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

#[cfg(test)]
mod tests {
    use super::Isa;
    use crate::simd::Lister;
    use crate::sparse::{Csc, CsrRow, PixelListing};

    /// Every way of listing a batch's pixels by pixel gives the same lists,
    /// with every instruction set's row listers (a vector at a time, and
    /// the whole-row one where this CPU has it), both transposes, for
    /// batches of odd sizes with dark pixels, dark images and rows taken
    /// out of order.
    fn listers_agree<I: Isa>() {
        if !I::detected() {
            return;
        }
        // SAFETY: I was detected; `Csc::build` passes slots of k entries.
        let lanes: CsrRow = |src, idx, val| unsafe { I::csr_row(src, idx, val) };
        let ways: Vec<(CsrRow, bool)> =
            [Some(lanes), I::wide_row_lister()].into_iter().flatten().flat_map(|r| [(r, false), (r, true)]).collect();
        for (b, k) in [(1, 1), (3, 7), (8, 64), (13, 100), (128, 784), (9, 17), (5, 130), (0, 9)] {
            let images = b + 5;
            let x: Vec<u8> = (0..images * k)
                .map(
                    |i| if (i / k) % 4 == 1 || (i * 7919) % 5 < 3 || i % k == k / 2 { 0 } else { (i * 31 % 256) as u8 },
                )
                .collect();
            let rows: Vec<u32> = (0..b as u32).map(|i| (i * 7 + 3) % images as u32).collect();
            // `None`: the parallel build of many threads.
            let lists = |lister: Option<Lister>, (row, wide): (CsrRow, bool)| {
                let mut csc = Csc::default();
                match lister {
                    Some(lister) => csc.build(&x, &rows, k, PixelListing::new(row, lister, wide)),
                    None => csc.build_par(&x, &rows, k, PixelListing::new(row, Lister::Table, wide)),
                }
                (0..k)
                    .map(|j| {
                        let (s, v) = csc.pixel(j);
                        (s.to_vec(), v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
                    })
                    .collect::<Vec<_>>()
            };
            let want = lists(Some(Lister::WordScan), ways[0]);
            assert!(want.iter().any(|(s, _)| !s.is_empty()) || k == 1 || b == 0);
            for (w, &way) in ways.iter().enumerate() {
                for lister in [Some(Lister::Table), Some(Lister::Compress), None] {
                    assert!(lists(lister, way) == want, "{} {lister:?} way {w}: {b}x{k}", I::NAME);
                }
            }
        }
    }

    #[test]
    fn every_pixel_lister_lists_the_same() {
        #[cfg(target_arch = "x86_64")]
        {
            listers_agree::<crate::simd::Avx2>();
            listers_agree::<crate::simd::Avx512>();
        }
        #[cfg(target_arch = "aarch64")]
        listers_agree::<crate::simd::Neon>();
    }

    /// Every pixel value's `/ 255` through the vector paths (`Simd::div255`
    /// in the row lister and in the weight gradient's packing) equals the
    /// scalar reference's division, on every instruction set this CPU runs.
    fn pixels_convert_exactly<I: Isa>() {
        if !I::detected() {
            return;
        }
        let lut = crate::shared::pixel_table::<f32>();
        // One image: pixels 255, 254, .., 1, then zeros (room for whole
        // vectors past the last value).
        let k = 300;
        let x: Vec<u8> = (0..k).map(|j| if j < 255 { (255 - j) as u8 } else { 0 }).collect();
        let (mut idx, mut val) = (vec![0u32; k], vec![0f32; k]);
        // SAFETY: I was detected; the slots hold k entries.
        let c = unsafe { I::csr_row(&x, &mut idx, &mut val) };
        assert_eq!(c, 255, "{}", I::NAME);
        for (&j, &v) in idx[..c].iter().zip(&val[..c]) {
            assert_eq!(v.to_bits(), lut[usize::from(x[j as usize])].to_bits(), "{}: pixel {}", I::NAME, x[j as usize]);
        }
        let panels = k.div_ceil(I::MR);
        let mut xt = vec![f32::NAN; panels * I::MR];
        // SAFETY: I was detected; xt holds whole 1-row panels; the row is x.
        unsafe { I::pack_xt(&mut xt, &x, &[0], 0, k) };
        for (j, &v) in xt.iter().enumerate().take(k) {
            assert_eq!(v.to_bits(), lut[usize::from(x[j])].to_bits(), "{}: packed pixel {}", I::NAME, x[j]);
        }
    }

    #[test]
    fn every_pixel_value_converts_exactly() {
        #[cfg(target_arch = "x86_64")]
        {
            pixels_convert_exactly::<crate::simd::Avx2>();
            pixels_convert_exactly::<crate::simd::Avx512>();
        }
        #[cfg(target_arch = "aarch64")]
        pixels_convert_exactly::<crate::simd::Neon>();
    }
}
