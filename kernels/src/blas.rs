//! The BLAS backend (cargo feature `blas`): placeholder until the BLAS path lands.
