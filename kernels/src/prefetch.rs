//! Software prefetch of a batch's rows.
//!
//! A batch gathers 128 random rows of a dataset far larger than the caches,
//! and the first pass over them (layer 1's forward) would wait on memory
//! for each row in turn (measured: docs/performance-log.md). Asking for the next
//! batch's rows one step ahead lets the memory system fetch them while the
//! current step computes.

/// Asks the CPU to start loading rows `rows` of the `(R, k)` u8 matrix `x`
/// into its caches. A hint: it changes no result, and rows out of range are
/// skipped (the kernels that read them report those).
pub fn prefetch_rows(x: &[u8], rows: &[u32], k: usize) {
    if k == 0 {
        return;
    }
    for &r in rows {
        let Some(row) = (r as usize).checked_mul(k).and_then(|start| x.get(start..start.checked_add(k)?)) else {
            continue;
        };
        // Every cache line the row touches: one address per 64 bytes, and
        // the last byte (the row need not start on a line).
        for p in row.iter().step_by(64).chain(row.last()) {
            line(p);
        }
    }
}

/// Prefetches the cache line holding `p` into the L2 cache (and, on x86,
/// L1 too where the core does that for this hint).
#[inline(always)]
fn line(p: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 is part of SSE, which every x86_64 CPU has; a
    // prefetch reads nothing architecturally and never faults, and `p` is a
    // live reference anyway.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>((p as *const u8).cast())
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint that never faults and writes no register or
    // memory; `p` is a live reference anyway.
    unsafe {
        core::arch::asm!("prfm pldl2keep, [{0}]", in(reg) p as *const u8, options(nostack, readonly, preserves_flags))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}
