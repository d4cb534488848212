//! A portable, counter-based random stream per seed: Philox4x32-10 (Salmon et al., "Parallel
//! random numbers: as easy as 1, 2, 3", SC 2011; Random123), computed on the host so CPU and
//! CUDA runs get bit-identical numbers.
//!
//! A stream is keyed by a u64 seed; its n-th 128-bit block is Philox(counter = n, key = seed).
//! Each block gives two 53-bit uniforms, and two standard normals by the Box–Muller
//! transform. Every request consumes whole blocks, so a stream's values depend only on the
//! seed and the sequence of requests made on it, never on other streams (EDM's
//! `StackedRandomGenerator` idea, without PyTorch's generator).
//!
//! This is *not* torch's generator: a seed here does not give torch's numbers.

/// Philox4x32 multipliers and Weyl key increments (Random123 `philox.h`).
const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: one 128-bit output block for a counter and a key.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// 2⁻⁵³, the spacing of the 53-bit uniforms.
const TWO_POW_M53: f64 = 1.0 / (1u64 << 53) as f64;

/// One seed's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    key: [u32; 2],
    block: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            block: 0,
        }
    }

    /// Blocks consumed so far.
    pub fn position(&self) -> u64 {
        self.block
    }

    fn next_block(&mut self) -> [u32; 4] {
        let ctr = [self.block as u32, (self.block >> 32) as u32, 0, 0];
        self.block += 1;
        philox4x32_10(ctr, self.key)
    }

    /// The block's two 64-bit words.
    fn next_words(&mut self) -> [u64; 2] {
        let b = self.next_block();
        [
            (u64::from(b[0]) << 32) | u64::from(b[1]),
            (u64::from(b[2]) << 32) | u64::from(b[3]),
        ]
    }

    /// `n` uniforms in [0, 1), two per block.
    pub fn uniform(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            for w in self.next_words() {
                out.push((w >> 11) as f64 * TWO_POW_M53);
            }
        }
        out.truncate(n);
        out
    }

    /// `n` standard normals by Box–Muller, two per block (an odd last one wastes the spare).
    pub fn normal(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let [a, b] = self.next_words();
            // u1 ∈ (0, 1] keeps ln finite; u2 ∈ [0, 1).
            let u1 = ((a >> 11) + 1) as f64 * TWO_POW_M53;
            let u2 = (b >> 11) as f64 * TWO_POW_M53;
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            out.push(r * theta.cos());
            out.push(r * theta.sin());
        }
        out.truncate(n);
        out
    }

    /// A uniform integer in 0..n (Lemire's multiply-shift on 64 bits; the bias is below 2⁻³²
    /// for any class count that fits in u32).
    pub fn below(&mut self, n: u64) -> u64 {
        let [w, _] = self.next_words();
        ((u128::from(w) * u128::from(n)) >> 64) as u64
    }
}

/// A 64-bit mix of a seed and a few counters (SplitMix64 finaliser over FNV-1a of the
/// parts), used to key independent random streams: `mix(&[seed, step, index])`.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123 `tests/kat_vectors`, the three "philox4x32 10" lines (counter, key, expected).
    #[test]
    fn philox_known_answers() {
        let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in kat {
            assert_eq!(philox4x32_10(ctr, key), want);
        }
    }

    #[test]
    fn normal_moments() {
        let v = Stream::new(42).normal(200_000);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        let u = Stream::new(7).uniform(100_000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert!((u.iter().sum::<f64>() / 1e5 - 0.5).abs() < 0.005);
    }

    #[test]
    fn streams_differ_and_repeat() {
        assert_eq!(Stream::new(3).normal(10), Stream::new(3).normal(10));
        assert_ne!(Stream::new(3).normal(10), Stream::new(4).normal(10));
        assert_ne!(Stream::new(1).normal(4), Stream::new(1 << 32).normal(4));
        let mut s = Stream::new(5);
        assert!((0..1000).map(|_| s.below(10)).all(|c| c < 10));
    }
}
