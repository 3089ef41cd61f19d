//! Choosing a backend at run time: [`select`], by name or `auto`.

#[cfg(feature = "blas")]
use crate::backend::blas;
use crate::{scalar, simd, Backend};

/// Every backend name [`select`] knows, fastest first (the order `auto`
/// tries them in, BLAS excepted: it is never chosen automatically). A new
/// instruction set is a name here and its arm in [`select`]; `auto`, the
/// tests and CI's forced runs ([`simd_backends`]) take it from this list.
pub const BACKEND_NAMES: &[&str] = &["avx512", "avx2", "neon", "blas", "scalar"];

/// The instruction-set backends among [`BACKEND_NAMES`] (all but `blas` and
/// `scalar`), fastest first, whether or not this CPU runs them.
///
/// ```
/// let simd: Vec<&str> = kiln_kernels::simd_backends().collect();
/// assert_eq!(simd, ["avx512", "avx2", "neon"]);
/// ```
pub fn simd_backends() -> impl Iterator<Item = &'static str> {
    BACKEND_NAMES.iter().copied().filter(|n| !matches!(*n, "blas" | "scalar"))
}

/// The backends this build and this CPU can run, fastest first.
pub fn available_backends() -> Vec<&'static str> {
    BACKEND_NAMES.iter().copied().filter(|name| select(name).is_ok()).collect()
}

/// The backend called `name`: `auto` picks the fastest SIMD backend this CPU
/// runs (else `scalar`); any other name must be one of [`BACKEND_NAMES`] and
/// runnable here, or the error says why. Never a silent fallback.
/// Detection runs once; the backends are built once and cached.
///
/// The error is a [`SelectError`], a `std::error::Error`, so `?` takes it
/// into `anyhow` or `Box<dyn Error>`:
///
/// ```
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let be = kiln_kernels::select("auto")?;
///     println!("{}", be.describe());
///     assert!(kiln_kernels::select("tpu").err().unwrap().to_string().contains("unknown backend `tpu`"));
///     Ok(())
/// }
/// ```
pub fn select(name: &str) -> Result<&'static dyn Backend<f32>, SelectError> {
    use std::sync::OnceLock;
    static SCALAR: scalar::Scalar = scalar::Scalar;
    #[cfg(target_arch = "x86_64")]
    static AVX2: OnceLock<Option<crate::backend::simd::SimdBackend<simd::Avx2>>> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    static AVX512: OnceLock<Option<crate::backend::simd::SimdBackend<simd::Avx512>>> = OnceLock::new();
    #[cfg(target_arch = "aarch64")]
    static NEON: OnceLock<Option<crate::backend::simd::SimdBackend<simd::Neon>>> = OnceLock::new();
    fn missing(name: &str, why: &str) -> SelectError {
        SelectError(format!("backend `{name}` cannot run here: {why}"))
    }
    match name {
        "scalar" => Ok(&SCALAR),
        "auto" => {
            for candidate in simd_backends() {
                if let Ok(b) = select(candidate) {
                    return Ok(b);
                }
            }
            Ok(&SCALAR)
        }
        #[cfg(target_arch = "x86_64")]
        "avx2" => match AVX2.get_or_init(crate::backend::simd::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks AVX2 or FMA")),
        },
        #[cfg(target_arch = "x86_64")]
        "avx512" => match AVX512.get_or_init(crate::backend::simd::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks AVX-512F")),
        },
        #[cfg(target_arch = "aarch64")]
        "neon" => match NEON.get_or_init(crate::backend::simd::SimdBackend::new) {
            Some(b) => Ok(b),
            None => Err(missing(name, "this CPU lacks NEON")),
        },
        #[cfg(not(target_arch = "x86_64"))]
        "avx2" | "avx512" => Err(missing(name, "it is an x86_64 instruction set")),
        #[cfg(not(target_arch = "aarch64"))]
        "neon" => Err(missing(name, "it is an aarch64 instruction set")),
        #[cfg(feature = "blas")]
        "blas" => Ok(blas::backend()),
        #[cfg(not(feature = "blas"))]
        "blas" => Err(missing(name, "this build lacks the `blas` cargo feature (build with --features blas)")),
        _ => Err(SelectError(format!("unknown backend `{name}`; expected one of: auto, {}", BACKEND_NAMES.join(", ")))),
    }
}

/// Why [`select`] gave no backend: an unknown name, or a backend this CPU
/// or this build cannot run (the message says which and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectError(String);

impl std::fmt::Display for SelectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectError {}
