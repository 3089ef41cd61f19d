//! Subnormal floats flushed to zero, as TensorFlow and JAX run their
//! compute threads (so Keras itself trains this way: `1e-38 * 0.01` is `0`
//! there), on every thread while it runs kiln's kernels.
//!
//! An optimizer's state for a pixel that stays dark decays geometrically
//! (`v = rho v`) through the subnormal range, and on Intel CPUs every
//! subnormal operand costs a microcode assist. With flushing on, such a
//! value becomes `+0` instead (`FTZ`: results; `DAZ`: operands).
//!
//! Each backend op takes a [`Flushed`] guard on the calling thread, and each
//! parallel task on the thread that runs it, so the mode holds for every
//! thread of whatever rayon pool the caller uses, and a caller's thread
//! gets its own mode back when the op returns. The BLAS backend's `sgemm`
//! runs in OpenBLAS's own threads, which keep theirs.

/// The mode bits: MXCSR's FTZ (bit 15) and DAZ (bit 6) on x86_64, FPCR's FZ
/// (bit 24) on aarch64 (which flushes both operands and results).
#[cfg(target_arch = "x86_64")]
const FLUSH: u64 = (1 << 15) | (1 << 6);
#[cfg(target_arch = "aarch64")]
const FLUSH: u64 = 1 << 24;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const FLUSH: u64 = 0;

/// The current thread's floating-point control register.
#[inline]
fn read() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut v: u32 = 0;
        // SAFETY: STMXCSR stores the 32-bit MXCSR to the address given,
        // which is that of a live, writable u32.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
        u64::from(v)
    }
    #[cfg(target_arch = "aarch64")]
    {
        let v: u64;
        // SAFETY: reading FPCR has no side effect.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    0
}

/// Sets the current thread's floating-point control register to `v` (a
/// value [`read`] gave, with at most the [`FLUSH`] bits changed).
#[inline]
fn write(v: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        let v = v as u32;
        // SAFETY: LDMXCSR loads MXCSR from the address of a live u32; the
        // value is one STMXCSR gave with only FTZ/DAZ changed, so no
        // reserved bit is set (which would fault).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags, readonly)) };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: FPCR as read, with only FZ changed: a valid mode.
        unsafe { std::arch::asm!("msr fpcr, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = v;
}

/// Whether the current thread flushes subnormals to zero.
pub fn flushing() -> bool {
    FLUSH != 0 && read() & FLUSH == FLUSH
}

/// While alive, the current thread flushes subnormals to zero; dropping it
/// restores the mode the thread had. Nested guards are cheap (one register
/// read) and restore nothing.
///
/// ```
/// use std::hint::black_box;
/// let tiny = black_box(1e-38f32) * black_box(0.01f32);
/// {
///     let _flushed = kiln_kernels::Flushed::new();
///     assert_eq!(black_box(1e-38f32) * black_box(0.01f32), 0.0);
/// }
/// assert_eq!(black_box(1e-38f32) * black_box(0.01f32), tiny);
/// ```
#[must_use = "the mode holds only while the guard lives"]
#[derive(Debug)]
pub struct Flushed {
    saved: Option<u64>,
}

impl Flushed {
    /// Turns flushing on for the current thread (see the type docs).
    #[inline]
    pub fn new() -> Self {
        let mode = read();
        if FLUSH == 0 || mode & FLUSH == FLUSH {
            return Flushed { saved: None };
        }
        write(mode | FLUSH);
        Flushed { saved: Some(mode) }
    }
}

impl Default for Flushed {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Flushed {
    #[inline]
    fn drop(&mut self) {
        if let Some(mode) = self.saved {
            write(mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    #[test]
    fn a_guard_flushes_and_restores() {
        let before = flushing();
        let tiny = black_box(1e-38f32) * black_box(0.01f32);
        assert!(tiny != 0.0 && tiny.is_subnormal(), "the test thread starts with gradual underflow");
        {
            let _outer = Flushed::new();
            assert!(flushing());
            // DAZ: a subnormal operand counts as zero.
            assert_eq!(black_box(tiny) * black_box(1.0f32), 0.0);
            {
                let _inner = Flushed::new();
                assert_eq!(black_box(1e-38f32) * black_box(0.01f32), 0.0);
            }
            assert!(flushing(), "an inner guard leaves the outer one's mode");
            assert_eq!(black_box(1e-300f64) * black_box(1e-10f64), 0.0, "f64 too");
        }
        assert_eq!(flushing(), before);
        assert_eq!(black_box(1e-38f32) * black_box(0.01f32), tiny);
    }
}
