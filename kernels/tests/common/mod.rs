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
