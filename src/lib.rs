//! kiln: trains and runs the classic Keras MNIST network on a CPU.
//!
//! * [`data`]: memory-mapped IDX datasets (raw or gzip, validated).
//! * [`model`]: the network, generic over `f32`/`f64`, on a kernel backend.
//! * [`train`]: the epoch loop, Keras's running metrics, evaluation.
//! * [`checkpoint`]: safetensors model files, written atomically.
//! * [`preprocess`]: any image to a 28x28 MNIST-style digit.
//! * [`draw`]: PNG charts and digit pictures without system libraries.
//! * [`fuzz_checks`]: the properties the fuzz targets check, shared with tests.

pub mod checkpoint;
pub mod data;
pub mod draw;
pub mod fsutil;
pub mod fuzz_checks;
pub mod idx;
pub mod model;
pub mod preprocess;
pub mod rng;
pub mod train;

/// The exit of a command-line tool: success when `result` is `Ok(true)`;
/// `Ok(false)` (some inputs failed, already reported) and errors (printed
/// here on one line, `error: ...`) are failures.
pub fn exit_code(result: anyhow::Result<bool>) -> std::process::ExitCode {
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
