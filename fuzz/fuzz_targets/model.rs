//! Fuzz target: `kiln::fuzz_checks::model` on arbitrary bytes (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln::fuzz_checks::model(data);
});
