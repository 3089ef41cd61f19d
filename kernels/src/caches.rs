//! The cache-dependent blocking parameters, derived once at run time from
//! the machine's data caches (Linux sysfs), so that the same build fits a
//! 32 KiB L1 and 1 MiB L2 (AMD Zen 4) and a 48 KiB L1 and 2 MiB L2 (Intel
//! Sapphire Rapids) alike.
//!
//! None of them changes a result bit: every blocked loop (the GEMM's k and
//! row blocks, the sparse forward's pixel blocks, dW1's panel groups) keeps
//! each output element's chain of additions in the same order, storing and
//! reloading exact f32 partial sums between blocks (tested: the model file
//! of a run that pretends other caches is byte-identical).
//!
//! `KILN_CACHES=L1D,L2` (e.g. `48K,2M`) overrides the detection, to try
//! another CPU's parameters.

use std::sync::OnceLock;

/// The parameters the kernels block by (see each field) and where the
/// cache sizes came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// L1 data cache of one core, bytes.
    pub l1d: usize,
    /// L2 cache of one core, bytes.
    pub l2: usize,
    /// Where `l1d` and `l2` come from (`sysfs`, `KILN_CACHES`, or `assumed`).
    pub source: &'static str,
    /// The GEMM's largest k-block (loop 4): 256 for a 32 KiB L1, in
    /// proportion to it (the microkernel's A and B panels live in L1).
    pub kc_max: usize,
    /// The GEMM's row block (loop 3), a multiple of every tile's MR (24):
    /// `MC x KC` floats of packed A, 144 x 256 (144 KiB) for a 1 MiB L2, in
    /// proportion to it.
    pub mc: usize,
    /// Bytes of W1 rows the sparse forward keeps in L1 while every sample
    /// passes over them: the whole L1d (measured best at 32 KiB).
    pub fwd_block_bytes: usize,
    /// Bytes of one sample's dZ slice in a group of dW1 panels: the L1d
    /// over 128 (a batch's group block then fills L1: 256 bytes for 32 KiB).
    pub grad_group_bytes: usize,
}

/// Every tile's MR divides this (AVX2 6, AVX-512 12, NEON 8).
const MR_LCM: usize = 24;

impl Blocking {
    /// The parameters for caches of `l1d` and `l2` bytes.
    ///
    /// ```
    /// use kiln_kernels::Blocking;
    /// let zen4 = Blocking::for_caches(32 << 10, 1 << 20, "example");
    /// assert_eq!((zen4.kc_max, zen4.mc, zen4.fwd_block_bytes, zen4.grad_group_bytes), (256, 144, 32768, 256));
    /// let spr = Blocking::for_caches(48 << 10, 2 << 20, "example");
    /// assert_eq!((spr.kc_max, spr.mc, spr.fwd_block_bytes, spr.grad_group_bytes), (384, 288, 49152, 384));
    /// ```
    pub fn for_caches(l1d: usize, l2: usize, source: &'static str) -> Self {
        let l1d = l1d.clamp(8 << 10, 1 << 20);
        let l2 = l2.clamp(128 << 10, 64 << 20);
        let kc_max = (256 * l1d / (32 << 10)).clamp(64, 1024);
        let mc = ((144 * l2 / (1 << 20)) / MR_LCM * MR_LCM).clamp(2 * MR_LCM, 40 * MR_LCM);
        Blocking { l1d, l2, source, kc_max, mc, fwd_block_bytes: l1d, grad_group_bytes: (l1d / 128).max(64) }
    }

    /// One line for the train banner.
    pub fn describe(&self) -> String {
        format!(
            "L1d {} KiB, L2 {} KiB ({}): GEMM k-block <= {}, row block {}; sparse forward block {} KiB, dW1 {} B a sample",
            self.l1d >> 10,
            self.l2 >> 10,
            self.source,
            self.kc_max,
            self.mc,
            self.fwd_block_bytes >> 10,
            self.grad_group_bytes
        )
    }
}

/// The parameters of this machine, detected once.
pub fn blocking() -> &'static Blocking {
    static B: OnceLock<Blocking> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(spec) = std::env::var("KILN_CACHES") {
            match parse_override(&spec) {
                Some((l1d, l2)) => return Blocking::for_caches(l1d, l2, "KILN_CACHES"),
                None => eprintln!("warning: KILN_CACHES={spec:?} is not L1D,L2 (e.g. 48K,2M); detecting instead"),
            }
        }
        match sysfs() {
            Some((l1d, l2)) => Blocking::for_caches(l1d, l2, "sysfs"),
            None => Blocking::for_caches(32 << 10, 1 << 20, "assumed"),
        }
    })
}

/// The CPU's maker and family as CPUID reports them (leaves 0 and 1), for
/// the choices that measured differently on CPUs of the same instruction
/// set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cpu {
    // Detected on x86_64 only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Intel,
    /// AMD, with its CPUID family (base plus extended): 25 is Zen 3 and
    /// Zen 4, 26 Zen 5.
    Amd(u32),
    /// Any other maker, or not x86_64.
    Other,
}

impl Cpu {
    /// The family from CPUID leaf 1's EAX: the base family, plus the
    /// extended family when the base is 15 (as Intel and AMD define it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn family_of(eax: u32) -> u32 {
        let base = (eax >> 8) & 0xf;
        if base == 0xf {
            base + ((eax >> 20) & 0xff)
        } else {
            base
        }
    }
}

/// This CPU, detected once.
pub(crate) fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // CPUID is available on every x86_64 CPU.
            let r = std::arch::x86_64::__cpuid(0);
            match [r.ebx, r.edx, r.ecx] {
                [0x756e_6547, 0x4965_6e69, 0x6c65_746e] => Cpu::Intel, // "Genu" "ineI" "ntel"
                [0x6874_7541, 0x6974_6e65, 0x444d_4163] => {
                    // "Auth" "enti" "cAMD"
                    Cpu::Amd(Cpu::family_of(std::arch::x86_64::__cpuid(1).eax))
                }
                _ => Cpu::Other,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu::Other
    })
}

/// A size as sysfs and `KILN_CACHES` write it: `32K`, `2M`, `1024`.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().filter(|&n| n > 0).map(|n| n * mult)
}

fn parse_override(spec: &str) -> Option<(usize, usize)> {
    let (a, b) = spec.split_once(',')?;
    Some((parse_size(a)?, parse_size(b)?))
}

/// cpu0's L1 data and L2 cache sizes from `/sys/devices/system/cpu`.
fn sysfs() -> Option<(usize, usize)> {
    let (mut l1d, mut l2) = (None, None);
    for i in 0..16 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        match (level.trim(), kind.trim()) {
            ("1", "Data" | "Unified") => l1d = parse_size(&size),
            ("2", "Unified" | "Data") => l2 = parse_size(&size),
            _ => {}
        }
    }
    Some((l1d?, l2?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_overrides_parse() {
        assert_eq!(parse_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("0K"), None);
        assert_eq!(parse_override("48K,2M"), Some((48 << 10, 2 << 20)));
        assert_eq!(parse_override("48K"), None);
    }

    #[test]
    fn families_decode_as_cpuid_defines_them() {
        // CPUID leaf 1 EAX of an EPYC 9004 (Zen 4), an EPYC 9005 (Zen 5) and
        // a Xeon Sapphire Rapids (family 6: no extended family added).
        assert_eq!(Cpu::family_of(0x00a1_0f11), 25);
        assert_eq!(Cpu::family_of(0x00b0_0f21), 26);
        assert_eq!(Cpu::family_of(0x0008_06f8), 6);
    }

    #[test]
    fn parameters_stay_in_range_and_tile_multiples() {
        for (l1, l2) in [(1, 1), (16 << 10, 256 << 10), (32 << 10, 1 << 20), (48 << 10, 2 << 20), (1 << 30, 1 << 30)] {
            let b = Blocking::for_caches(l1, l2, "test");
            assert!(b.mc.is_multiple_of(MR_LCM) && b.mc >= 2 * MR_LCM, "{b:?}");
            assert!((64..=1024).contains(&b.kc_max) && b.grad_group_bytes >= 64, "{b:?}");
        }
    }
}
