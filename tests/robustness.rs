//! Properties of the IDX parser on arbitrary bytes, and training on extreme
//! inputs.

use kiln::idx::{parse, Kind};
use kiln::model::{Arch, Batch, Inputs, Model, Params};
use kiln_kernels::RmsProp;
use proptest::prelude::*;

/// A header for `dims` followed by `payload` bytes.
fn idx_bytes(ty: u8, dims: &[u32], payload: usize) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.resize(v.len() + payload, 1);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte string either parses into sizes that match the file exactly,
    /// or is an error; never a panic (`kiln::fuzz_checks::idx_raw`).
    #[test]
    fn arbitrary_bytes_parse_consistently_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        // The fuzz target's check (it panics when the property fails).
        kiln::fuzz_checks::idx_raw(&bytes);
    }

    /// Near-valid files (a real header, mutated) behave the same way.
    #[test]
    fn mutated_headers_parse_consistently_or_fail(
        count in 0u32..4, flip in 0usize..24, value in any::<u8>(), extra in 0usize..3, cut in 0usize..3,
    ) {
        let mut v = idx_bytes(8, &[count, 28, 28], count as usize * 784 + extra);
        if flip < v.len() { v[flip] = value; }
        v.truncate(v.len().saturating_sub(cut));
        if let Ok(h) = parse(&v, Kind::Images) {
            prop_assert_eq!(h.offset + h.bytes, v.len());
            prop_assert_eq!(h.count * 784, h.bytes);
        }
        let l = idx_bytes(8, &[count], count as usize + extra);
        if let Ok(h) = parse(&l, Kind::Labels) {
            prop_assert_eq!(h.offset + h.bytes, l.len());
            prop_assert_eq!(extra, 0);
        }
    }
}

/// Inputs of all zeros and of all 255 train without NaN on every backend.
#[test]
fn extreme_inputs_train_without_nan() {
    for fill in [0u8, 255] {
        let pixels = vec![fill; 64 * 784];
        let labels: Vec<u8> = (0..64).map(|i| (i % 10) as u8).collect();
        let rows: Vec<u32> = (0..64).collect();
        for name in kiln_kernels::available_backends() {
            let be = kiln_kernels::select(name).unwrap();
            let arch = Arch::parse("32:relu,16:sigmoid", 784, 10).unwrap();
            let mut m = Model::new(be, &Params::glorot(&arch, 5), RmsProp::default()).unwrap();
            for step in 0..30 {
                let st = m.train_step(Batch { inputs: Inputs::Pixels(&pixels), labels: &labels, rows: &rows });
                let st = st.unwrap_or_else(|_| panic!("{name}: non-finite loss at step {step} with pixels {fill}"));
                assert!(st.loss_sum.is_finite());
            }
            assert!(m.params().values().iter().all(|v| v.is_finite()), "{name}: pixels {fill}");
        }
    }
}
