//! Helpers shared by the kernel tests.
#![allow(dead_code)]

/// SplitMix64, for reproducible inputs.
pub struct Gen(pub u64);
impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    pub fn pixels(&mut self, n: usize) -> Vec<u8> {
        // About 80% zeros, like MNIST.
        (0..n).map(|_| if self.next().is_multiple_of(5) { (self.next() % 256) as u8 } else { 0 }).collect()
    }
}

use kiln_kernels::{Adam, Optimizer, RmsProp, Sgd, Update, MAX_SLOTS};

/// One of each update rule the kernels implement, with non-default
/// hyper-parameters where a default would hide a term.
pub fn optimizers() -> Vec<Optimizer> {
    vec![
        Optimizer::RmsProp(RmsProp::default()),
        // eps = 0 with zero velocities makes a dark pixel's step 0 / 0 = NaN:
        // the sparse path must not skip that update.
        Optimizer::RmsProp(RmsProp { eps: 0.0, ..RmsProp::default() }),
        Optimizer::RmsProp(RmsProp { momentum: 0.5, centered: true, ..RmsProp::default() }),
        Optimizer::RmsProp(RmsProp { momentum: 0.3, ..RmsProp::default() }),
        Optimizer::Sgd(Sgd::default()),
        Optimizer::Sgd(Sgd { momentum: 0.9, ..Sgd::default() }),
        Optimizer::Sgd(Sgd { momentum: 0.9, nesterov: true, ..Sgd::default() }),
        Optimizer::Adam(Adam::default()),
        Optimizer::Adam(Adam::adamw()),
    ]
}

/// State arrays for `opt` over `len` weights: small non-negative values
/// (some exactly 0) in the used slots, empty elsewhere.
pub fn state_for(opt: &Optimizer, len: usize, g: &mut Gen) -> [Vec<f32>; MAX_SLOTS] {
    opt.slots().map(|s| match s {
        Some(_) => g.vec(len).iter().map(|v| if *v > 0.3 { 0.0 } else { v.abs() * 1e-3 }).collect(),
        None => Vec::new(),
    })
}

/// The [`Update`] of `w` with `state` by `opt`'s step number `t`.
pub fn update_of<'a>(
    opt: &Optimizer,
    t: u64,
    w: &'a mut [f32],
    state: &'a mut [Vec<f32>; MAX_SLOTS],
) -> Update<'a, f32> {
    let [a, b, c] = state.each_mut().map(|v| &mut v[..]);
    Update::new(w, [a, b, c], opt.step(t, opt.lr() as f32))
}

/// The bits of `w` and every state slot, to compare updates exactly.
pub fn update_bits(w: &[f32], state: &[Vec<f32>; MAX_SLOTS]) -> Vec<u32> {
    w.iter().chain(state.iter().flatten()).map(|f| f.to_bits()).collect()
}
