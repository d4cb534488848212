//! Block noise: noise with boosted low frequencies, added on top of the Gaussian noise of
//! the second stage (Teng et al. 2024, arXiv 2309.03350, "block noise";
//! `RelayDiffusion: blurring.py block_noise`).
//!
//! Two definitions exist (RDM_NOTES §5):
//! * [`BlockNoise::Rolled`], what the released code does and the default: one Gaussian g,
//!   B_s(g)[h,w] = (1/s)·Σ_{a,d<s} g[(h−a) mod H, (w−d) mod W], a circular moving-window sum
//!   (per-pixel variance 1, *not* constant on blocks), mixed as ε + β·B_s(g) with **no**
//!   renormalisation. The released checkpoints were trained with this noise.
//! * [`BlockNoise::Paper`], the paper's: one Gaussian per aligned s×s block (the nearest
//!   upsampling of an (H/s)×(W/s) Gaussian z), mixed as (ε + β·E_s(z))/√(1+β²).
//!
//! Both consume the same number of draws (ε, then the block base), so switching the option
//! keeps every later draw of a seed's stream in place.

use super::noise::NoiseSource;
use super::upsample::upsample_nearest;
use candle_core::{bail, DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which block noise the losses and samplers mix in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockNoise {
    /// The released code's circular rolled sum, unnormalised mixing (default).
    #[default]
    Rolled,
    /// The paper's block-constant noise, mixing renormalised by 1/√(1+β²).
    Paper,
}

/// B_s(g): the code's rolled-sum block noise of `g: [..., H, W]`. B_1(g) = g.
pub fn rolled_block_noise(g: &Tensor, s: usize) -> Result<Tensor> {
    if s <= 1 {
        return Ok(g.clone());
    }
    let rank = g.rank();
    if rank < 2 {
        bail!("block noise needs [..., H, W], got {:?}", g.dims())
    }
    // Σ_a Σ_d roll(g, (a, d)) factors into a sum of W-rolls followed by a sum of H-rolls.
    let roll_sum = |x: &Tensor, dim: usize| -> Result<Tensor> {
        let mut acc = x.clone();
        for shift in 1..s {
            acc = (acc + x.roll(shift as i32, dim)?)?;
        }
        Ok(acc)
    };
    let along_w = roll_sum(g, rank - 1)?;
    roll_sum(&along_w, rank - 2)? / s as f64
}

/// E_s(z): the paper's block-constant noise, every value of `z: [B, C, H/s, W/s]` repeated
/// over an s×s block.
pub fn block_constant_noise(z: &Tensor, s: usize) -> Result<Tensor> {
    upsample_nearest(z, s)
}

impl BlockNoise {
    /// Draws the unit-σ noise of the second stage for `shape` = `[C, H, W]` per sample:
    /// ε alone when `beta == 0` (one draw, as the reference skips `block_noise` then),
    /// otherwise ε then the block base (two draws), mixed with weight β.
    pub fn draw<R: NoiseSource + ?Sized>(
        &self,
        noise: &mut R,
        shape: &[usize],
        block_size: usize,
        beta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let eps = noise.randn(shape, dtype, device)?;
        if beta <= 0.0 {
            return Ok(eps);
        }
        match self {
            Self::Rolled => {
                let g = noise.randn(shape, dtype, device)?;
                eps + (rolled_block_noise(&g, block_size)? * beta)?
            }
            Self::Paper => {
                let [c, h, w] = shape else {
                    bail!("paper block noise needs a [C, H, W] sample shape, got {shape:?}")
                };
                if h % block_size != 0 || w % block_size != 0 {
                    bail!("block size {block_size} does not divide {h}x{w}")
                }
                let low = [*c, h / block_size, w / block_size];
                let z = noise.randn(&low, dtype, device)?;
                let mixed = (eps + (block_constant_noise(&z, block_size)? * beta)?)?;
                mixed / (1.0 + beta * beta).sqrt()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_sum_by_hand() -> Result<()> {
        // 1×3 plane [1, 2, 3] rolled over W only would need H ≥ s; use a 2×2 plane, s = 2:
        // every output is (1/2)·(sum of all four) because each window covers the whole plane.
        let g = Tensor::new(&[[[[1f64, 2.], [3., 4.]]]], &Device::Cpu)?;
        let b = rolled_block_noise(&g, 2)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(b, vec![5.0; 4]);
        // On a 1×4 row with s = 2 the H-sum wraps onto the single row (doubling it):
        // out[w] = (1/2)·2·(g[w] + g[w−1]).
        let g = Tensor::new(&[[[[1f64, 2., 3., 4.]]]], &Device::Cpu)?;
        let b = rolled_block_noise(&g, 2)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(b, vec![5.0, 3.0, 5.0, 7.0]);
        Ok(())
    }

    #[test]
    fn block_constant_is_nearest_upsampling() -> Result<()> {
        let z = Tensor::new(&[[[[1f64, 2.], [3., 4.]]]], &Device::Cpu)?;
        let e = block_constant_noise(&z, 3)?;
        assert_eq!(e.dims(), &[1, 1, 6, 6]);
        let v = e.get(0)?.get(0)?.to_vec2::<f64>()?;
        assert_eq!(v[2], vec![1., 1., 1., 2., 2., 2.]);
        assert_eq!(v[3], vec![3., 3., 3., 4., 4., 4.]);
        Ok(())
    }
}
