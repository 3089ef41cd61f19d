//! A small, seeded, portable random number generator (SplitMix64), so that a
//! seed means the same weights and the same batch order on every machine and
//! in every version of every dependency.

/// SplitMix64 (Steele, Lea and Flood 2014): 64 bits of state, passes BigCrush.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

/// Independent streams drawn from one user seed.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Glorot initialisation of the kernel of layer `l` (0-based): each
    /// layer has its own stream, so adding a layer changes no other
    /// layer's initial weights.
    InitKernel(u32),
    /// The shuffle of epoch `e` (0-based).
    Shuffle(u32),
}

impl Rng {
    /// A generator for `stream` of `seed`: the seed and the stream tag are
    /// mixed so that nearby seeds and tags give unrelated sequences.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let tag = match stream {
            Stream::InitKernel(l) => 1 + u64::from(l),
            Stream::Shuffle(e) => 0x1_0000_0000 | u64::from(e),
        };
        let mut mix = Rng { state: seed };
        let a = mix.next_u64();
        let mut mix = Rng { state: a ^ tag.wrapping_mul(0xD605_BBB5_8C8A_BEC1) };
        Rng { state: mix.next_u64() }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` without bias (Lemire's multiply-and-reject); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle of `v` in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, Stream::InitKernel(0)).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut w1 = Rng::new(7, Stream::InitKernel(0));
        let mut w2 = Rng::new(7, Stream::InitKernel(1));
        let mut s0 = Rng::new(7, Stream::Shuffle(0));
        let mut other_seed = Rng::new(8, Stream::InitKernel(0));
        let firsts = [w1.next_u64(), w2.next_u64(), s0.next_u64(), other_seed.next_u64()];
        for i in 0..firsts.len() {
            for j in i + 1..firsts.len() {
                assert_ne!(firsts[i], firsts[j]);
            }
        }
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(1, Stream::Shuffle(3));
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        // Each bin expects 10,000; 5 sigma is about 460.
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
        let f: Vec<f64> = (0..1000).map(|_| r.next_f64()).collect();
        assert!(f.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        Rng::new(5, Stream::Shuffle(0)).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
