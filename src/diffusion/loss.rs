//! Training objectives: EDM's loss for stage 1 (Karras et al. 2022, §5 and Table 1;
//! `RelayDiffusion: training/loss.py EDMLoss`, identical to edm's) and RDM's blurring loss for
//! stage 2 (Teng et al. 2024, arXiv 2309.03350; `RelayDiffusion: training/loss.py BlurLoss`).
//!
//! Both return the per-pixel loss `[B, C, H, W]`; the training loop reduces it. Each has a
//! `loss` that draws its own randomness from a [`NoiseSource`], and a `loss_at` that takes the
//! per-sample noise-level draws (r or u) so tests can inject recorded values; both draw the
//! image noise in the reference's order.

use super::block_noise::BlockNoise;
use super::blur::{dct_blur, BlurSchedule, MIN_SCALE};
use super::noise::NoiseSource;
use super::precond::SIGMA_DATA;
use super::schedule::{normal_cdf, normal_ppf, P_MEAN, P_STD};
use super::Denoiser;
use candle_core::{bail, DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// What a loss computed, for logging and tests.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// σ per sample.
    pub sigma: Vec<f64>,
    /// λ(σ) per sample.
    pub weight: Vec<f64>,
    /// The clean input after blurring (stage 2); the image itself for EDM.
    pub y_clean: Tensor,
    /// The noise added, n.
    pub n: Tensor,
    /// The network input, y_clean + n.
    pub y_noisy: Tensor,
    /// λ(σ)·(D(y_noisy; σ) − y)², `[B, C, H, W]`.
    pub loss: Tensor,
}

/// EDM's loss: ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_d²)/(σ σ_d)² (no clamp),
/// loss = λ·(D(y + σε; σ) − y)².
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmLoss {
    pub p_mean: f64,
    pub p_std: f64,
    pub sigma_data: f64,
}

impl Default for EdmLoss {
    fn default() -> Self {
        Self {
            p_mean: P_MEAN,
            p_std: P_STD,
            sigma_data: SIGMA_DATA,
        }
    }
}

impl EdmLoss {
    /// σ = exp(P_mean + P_std·r) for r ~ N(0, 1).
    pub fn sigma(&self, r: f64) -> f64 {
        (r * self.p_std + self.p_mean).exp()
    }

    /// λ(σ) = (σ² + σ_d²)/(σ σ_d)².
    pub fn weight(&self, sigma: f64) -> f64 {
        edm_weight(sigma, self.sigma_data)
    }

    /// Draws r (`randn([B])`) then ε, as `EDMLoss.__call__`.
    pub fn loss<N, R>(
        &self,
        net: &N,
        y: &Tensor,
        labels: Option<&Tensor>,
        noise: &mut R,
    ) -> Result<Tensor>
    where
        N: Denoiser + ?Sized,
        R: NoiseSource + ?Sized,
    {
        let r = noise
            .randn(&[], DType::F64, &Device::Cpu)?
            .to_vec1::<f64>()?;
        Ok(self.loss_at(net, y, labels, &r, noise)?.loss)
    }

    /// The loss for given normal draws `r` (one per sample); draws ε from `noise`.
    pub fn loss_at<N, R>(
        &self,
        net: &N,
        y: &Tensor,
        labels: Option<&Tensor>,
        r: &[f64],
        noise: &mut R,
    ) -> Result<LossParts>
    where
        N: Denoiser + ?Sized,
        R: NoiseSource + ?Sized,
    {
        let sigma: Vec<f64> = r.iter().map(|&r| self.sigma(r)).collect();
        let weight: Vec<f64> = sigma.iter().map(|&s| self.weight(s)).collect();
        let eps = noise.randn(&y.dims()[1..], y.dtype(), y.device())?;
        let n = eps.broadcast_mul(&per_sample(&sigma, y)?)?;
        finish(net, y, y.clone(), n, labels, sigma, weight)
    }
}

/// The noise levels of one stage-2 training sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurLevel {
    /// u after truncation, max(u, u_trunc).
    pub u: f64,
    pub blur_sigma: f64,
    pub sigma: f64,
    pub weight: f64,
}

/// RDM's blurring loss. From u ~ U[0, 1) per image:
/// ```text
/// u_c = max(u, Φ((ln 0.0075 − P_mean)/P_std)·ℓ),   σ_b = σ_b,max·sin²(π u_c/2)
/// σ = exp(P_std·Φ⁻¹(u_c·ℓ) + P_mean),   λ = min((σ² + σ_d²)/(σ σ_d)², 1e5)
/// loss = λ·(D(DCTBlur(y, p, σ_b) + σ(ε + β·B_p(g)); σ) − y)²      (target: the UNblurred y)
/// ```
/// ℓ enters twice at the truncation point, so the smallest σ is 0.00712 (ℓ = 0.93), not the
/// commented 0.0075 (RDM_NOTES §4). `Default` is what `train.py` passes (up_scale 4,
/// block_scale 0.15, ℓ 0.93, σ_b,max 3); the class defaults have block_scale 0. CelebA-HQ
/// trains with ℓ 0.89 and σ_b,max 2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlurLoss {
    pub p_mean: f64,
    pub p_std: f64,
    pub sigma_data: f64,
    pub up_scale: usize,
    pub prob_length: f64,
    pub blur_sigma_max: f64,
    pub min_scale: f64,
    /// β; > 0 adds block noise (after one discarded draw, as the reference).
    pub block_scale: f64,
    pub block_noise: BlockNoise,
    /// The σ the truncation of u aims at (7.5e-3).
    pub truncate_sigma: f64,
    /// Upper clamp of λ (1e5).
    pub weight_max: f64,
}

impl Default for BlurLoss {
    fn default() -> Self {
        Self {
            p_mean: P_MEAN,
            p_std: P_STD,
            sigma_data: SIGMA_DATA,
            up_scale: 4,
            prob_length: 0.93,
            blur_sigma_max: 3.0,
            min_scale: MIN_SCALE,
            block_scale: 0.15,
            block_noise: BlockNoise::Rolled,
            truncate_sigma: 7.5e-3,
            weight_max: 1e5,
        }
    }
}

impl BlurLoss {
    /// u_trunc = Φ((ln truncate_sigma − P_mean)/P_std)·ℓ.
    pub fn truncate_u(&self) -> f64 {
        normal_cdf((self.truncate_sigma.ln() - self.p_mean) / self.p_std) * self.prob_length
    }

    /// The blur schedule this loss trains (the sampler should use the same ℓ and σ_b,max).
    pub fn schedule(&self) -> BlurSchedule {
        BlurSchedule {
            prob_length: self.prob_length,
            blur_sigma_max: self.blur_sigma_max,
            min_scale: self.min_scale,
            p_mean: self.p_mean,
            p_std: self.p_std,
        }
    }

    /// u ↦ (u_c, σ_b, σ, λ).
    pub fn level(&self, u: f64) -> BlurLevel {
        let u = u.max(self.truncate_u());
        let sigma = (normal_ppf(u * self.prob_length) * self.p_std + self.p_mean).exp();
        BlurLevel {
            u,
            blur_sigma: self.schedule().blur_sigma_of_u(u),
            sigma,
            weight: edm_weight(sigma, self.sigma_data).min(self.weight_max),
        }
    }

    /// Draws u (`uniform`), then the image noise, as `BlurLoss.__call__`.
    pub fn loss<N, R>(
        &self,
        net: &N,
        y: &Tensor,
        labels: Option<&Tensor>,
        noise: &mut R,
    ) -> Result<Tensor>
    where
        N: Denoiser + ?Sized,
        R: NoiseSource + ?Sized,
    {
        let u = noise.uniform()?;
        Ok(self.loss_at(net, y, labels, &u, noise)?.loss)
    }

    /// The loss for given uniforms `u` (one per sample). Draws, in the reference's order:
    /// when β > 0 one normal that is discarded, then ε, then the block base g; else only ε.
    pub fn loss_at<N, R>(
        &self,
        net: &N,
        y: &Tensor,
        labels: Option<&Tensor>,
        u: &[f64],
        noise: &mut R,
    ) -> Result<LossParts>
    where
        N: Denoiser + ?Sized,
        R: NoiseSource + ?Sized,
    {
        let levels: Vec<BlurLevel> = u.iter().map(|&u| self.level(u)).collect();
        let blur_sigmas: Vec<f64> = levels.iter().map(|l| l.blur_sigma).collect();
        let sigma: Vec<f64> = levels.iter().map(|l| l.sigma).collect();
        let weight: Vec<f64> = levels.iter().map(|l| l.weight).collect();
        let y_blurred = dct_blur(y, self.up_scale, &blur_sigmas, self.min_scale)?;

        let shape = &y.dims()[1..];
        if self.block_scale > 0.0 {
            // The reference draws n = randn·σ, then overwrites it when block_scale > 0.
            noise.randn(shape, y.dtype(), y.device())?;
        }
        let unit = self.block_noise.draw(
            noise,
            shape,
            self.up_scale,
            self.block_scale,
            y.dtype(),
            y.device(),
        )?;
        let n = unit.broadcast_mul(&per_sample(&sigma, y)?)?;
        finish(net, y, y_blurred, n, labels, sigma, weight)
    }
}

/// λ(σ) = (σ² + σ_d²)/(σ σ_d)².
fn edm_weight(sigma: f64, sigma_data: f64) -> f64 {
    (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data).powi(2)
}

/// Per-sample values as a `[B, 1, 1, 1]` tensor in `like`'s dtype and device.
fn per_sample(values: &[f64], like: &Tensor) -> Result<Tensor> {
    if values.len() != like.dim(0)? {
        bail!(
            "{} per-sample values for a batch of {}",
            values.len(),
            like.dim(0)?
        )
    }
    let mut shape = vec![1; like.rank()];
    shape[0] = values.len();
    super::blur::host_tensor(values.to_vec(), &shape, like.dtype(), like.device())
}

/// y_noisy = y_clean + n; loss = λ·(D(y_noisy; σ) − y)².
fn finish<N: Denoiser + ?Sized>(
    net: &N,
    y: &Tensor,
    y_clean: Tensor,
    n: Tensor,
    labels: Option<&Tensor>,
    sigma: Vec<f64>,
    weight: Vec<f64>,
) -> Result<LossParts> {
    let y_noisy = (&y_clean + &n)?;
    let sigma_t = super::blur::host_tensor(sigma.clone(), &[sigma.len()], y.dtype(), y.device())?;
    let d = net.denoise(&y_noisy, &sigma_t, labels)?;
    let loss = (d - y)?.sqr()?.broadcast_mul(&per_sample(&weight, y)?)?;
    Ok(LossParts {
        sigma,
        weight,
        y_clean,
        n,
        y_noisy,
        loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::SeedNoise;

    /// RDM_NOTES §4 / golden `blur_loss.json`: the smallest σ is 0.0071228 (ℓ 0.93) and
    /// 0.0069056 (ℓ 0.89); σ ≤ exp(1.2·Φ⁻¹(ℓ) − 1.2) = 1.77 for ℓ = 0.93.
    #[test]
    fn truncation_and_range() {
        let l = BlurLoss::default();
        assert!((l.truncate_u() - 0.0009710645449723382).abs() < 1e-15);
        assert!((l.level(0.0).sigma - 0.007122790260369689).abs() < 1e-14);
        let c = BlurLoss {
            prob_length: 0.89,
            blur_sigma_max: 2.0,
            ..l
        };
        assert!((c.level(0.0).sigma - 0.006905600700241922).abs() < 1e-14);
        let top = l.level(1.0 - 1e-12);
        assert!((top.sigma - 1.77).abs() < 0.01 && (top.blur_sigma - 3.0).abs() < 1e-9);
        assert!(l.level(0.0).weight < l.weight_max);
    }

    /// Draws follow the reference: u + 3 normals with block noise (one discarded), u + 1
    /// without; EDM draws r then ε. The loss is non-negative.
    #[test]
    fn draw_counts() -> Result<()> {
        let net = |x: &Tensor, s: &Tensor, _l: Option<&Tensor>| {
            let c = (s.sqr()? + 0.25)?.recip()?.affine(0.25, 0.0)?;
            x.broadcast_mul(&c.reshape((x.dim(0)?, 1, 1, 1))?)
        };
        let y = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu)?;
        let mut noise = SeedNoise::new(&[1, 2]);
        let loss = BlurLoss::default().loss(&net, &y, None, &mut noise)?;
        assert_eq!(noise.draws(), 4);
        assert!(loss.min_all()?.to_scalar::<f32>()? >= 0.0);
        let mut noise = SeedNoise::new(&[1, 2]);
        BlurLoss {
            block_scale: 0.0,
            ..Default::default()
        }
        .loss(&net, &y, None, &mut noise)?;
        assert_eq!(noise.draws(), 2);
        let mut noise = SeedNoise::new(&[1, 2]);
        EdmLoss::default().loss(&net, &y, None, &mut noise)?;
        assert_eq!(noise.draws(), 2);
        Ok(())
    }
}
