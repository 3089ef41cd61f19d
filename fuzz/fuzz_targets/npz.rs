//! Fuzz target: `kiln::fuzz_checks::npz` on arbitrary bytes (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln::fuzz_checks::npz(data);
});
