//! The [`crate::Backend`] implementations: `simd` (every instruction set
//! kiln has entry points for, in `isa.rs`), `scalar` (the reference every
//! other backend is tested against) and `blas` (the product on a BLAS,
//! with the `blas` feature).

#[cfg(feature = "blas")]
pub(crate) mod blas;
pub mod scalar;
pub(crate) mod simd;
