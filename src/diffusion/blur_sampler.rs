//! The second-stage (relay) sampler: blurring diffusion in the patch-wise DCT domain, started
//! from the nearest-upsampled first-stage image plus noise (Teng et al. 2024, arXiv
//! 2309.03350; `RelayDiffusion: generate.py blur_sampler`, and the CelebA-HQ variant in
//! `generate_celebahq.py`).
//!
//! With α(t) the blur pattern at noise level t ([`BlurSchedule`], ℓ = truncation_t), p the
//! patch size (= up_scale) and n the steps kept below truncation_sigma:
//! ```text
//! x_0 = latents + t_0·(ε + s_block·B_p(g))
//! step i:  D_i = D(x_i, t_i);  if i = n−1: return D_i        (the last denoiser output)
//!          U = DCT(x_i), U₀ = DCT(D_i), d = (U − U₀)/t_i, γ = √(1 − s_noise²)·t_{i+1}/t_i
//!          A = (α_{i+1} + γ − γα_i)⊙U,  K = t_i(γα_i − α_{i+1})
//!          x' = IDCT(A + K⊙d) + s_noise·t_{i+1}·(ε₁ + s_block·B_p(g₁))
//!          d' = (DCT(x') − DCT(D(x', t_{i+1})))/t_{i+1}
//!          x_{i+1} = IDCT(A + K⊙(d + d')/2) + s_noise·t_{i+1}·(ε₂ + s_block·B_p(g₂))   (fresh)
//! ```
//! The mean is γU + (α_{i+1} − γα_i)U₀: a DDIM-like update of the blurred clean estimate.
//! Any resolution divisible by p works; everything runs in float64 with α in f64.

use super::block_noise::BlockNoise;
use super::blur::{BlurSchedule, MIN_SCALE};
use super::dct::PatchDct;
use super::guidance::{Evaluator, Guidance};
use super::noise::NoiseSource;
use super::schedule::{blur_time_steps, churn_gamma, t_hat, P_MEAN, P_STD};
pub use super::upsample::upsample_nearest;
use super::{Denoiser, SamplerOutput, Trajectory};
use candle_core::{bail, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The CelebA-HQ variant's churn (`generate_celebahq.py`): one extra draw at the start of
/// every step, the last included, for x̂ = x_i + √(t̂² − t_i²)·S_noise·ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    #[serde(alias = "S_churn")]
    pub s_churn: f64,
    #[serde(alias = "S_min")]
    pub s_min: f64,
    #[serde(alias = "S_max")]
    pub s_max: f64,
    #[serde(alias = "S_noise")]
    pub s_noise: f64,
}

impl Default for Churn {
    /// The script's defaults: S_churn 0 (t̂ = t_i, the draw is multiplied by 0).
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_min: 0.0,
            s_max: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

/// Settings of [`blur_sampler`]. `Default` is `generate.py`'s CLI: 18 steps (7 kept),
/// σ ∈ [0.008, 80], ρ 7, truncation_sigma 0.9, truncation_t 0.93, up_scale 4, σ_b,max 3,
/// s_block 0.15, s_noise 0.2, no guidance. (The function defaults differ only in num_steps
/// 250 and cfg 0.) Presets: [`BlurSamplerConfig::imagenet256`], [`BlurSamplerConfig::celebahq256`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlurSamplerConfig {
    pub num_steps: usize,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub rho: f64,
    /// Steps with t ≥ truncation_sigma are dropped; sampling starts just below it.
    pub truncation_sigma: f64,
    /// ℓ of the sampler's blur schedule (`prob_length` of `get_alpha_t`).
    pub truncation_t: f64,
    /// p: the DCT patch size, the upsampling factor between the stages.
    pub up_scale: usize,
    pub blur_sigma_max: f64,
    pub min_scale: f64,
    /// Classifier-free guidance λ (≤ 1: off).
    pub cfg_scale: f64,
    /// Optional guidance interval [σ_lo, σ_hi] (see [`Guidance`]).
    pub cfg_interval: Option<[f64; 2]>,
    /// β of the block noise; 0 skips its draws, as the reference.
    pub s_block: f64,
    /// Fraction of fresh noise per step (γ = √(1 − s_noise²)·t_{i+1}/t_i).
    pub s_noise: f64,
    pub block_noise: BlockNoise,
    /// 1: predictor only; 2: with the corrector (the reference).
    pub order: u8,
    /// `Some`: the CelebA-HQ variant (`generate_celebahq.py`), with its churn draw each step.
    pub churn: Option<Churn>,
}

impl Default for BlurSamplerConfig {
    fn default() -> Self {
        Self {
            num_steps: 18,
            sigma_min: 0.008,
            sigma_max: 80.0,
            rho: 7.0,
            truncation_sigma: 0.9,
            truncation_t: 0.93,
            up_scale: 4,
            blur_sigma_max: 3.0,
            min_scale: MIN_SCALE,
            cfg_scale: 1.0,
            cfg_interval: None,
            s_block: 0.15,
            s_noise: 0.2,
            block_noise: BlockNoise::Rolled,
            order: 2,
            churn: None,
        }
    }
}

impl BlurSamplerConfig {
    /// ImageNet 256² (`generate_imagenet.py`): 200 steps at ρ = 100 (100 kept), cfg 3.5.
    pub fn imagenet256() -> Self {
        Self {
            num_steps: 200,
            rho: 100.0,
            cfg_scale: 3.5,
            ..Self::default()
        }
    }

    /// CelebA-HQ 256² (`generate_celebahq.py`): 150 steps (54 kept), truncation_sigma 0.95,
    /// truncation_t 1.05, σ_b,max 2, with the variant's churn draw.
    pub fn celebahq256() -> Self {
        Self {
            num_steps: 150,
            truncation_sigma: 0.95,
            truncation_t: 1.05,
            blur_sigma_max: 2.0,
            churn: Some(Churn::default()),
            ..Self::default()
        }
    }

    /// The sampler's blur schedule α(t).
    pub fn schedule(&self) -> BlurSchedule {
        BlurSchedule {
            prob_length: self.truncation_t,
            blur_sigma_max: self.blur_sigma_max,
            min_scale: self.min_scale,
            p_mean: P_MEAN,
            p_std: P_STD,
        }
    }

    /// The kept time steps followed by 0.
    pub fn time_steps(&self) -> Vec<f64> {
        blur_time_steps(
            self.num_steps,
            self.sigma_min,
            self.sigma_max,
            self.rho,
            self.truncation_sigma,
        )
    }

    pub fn guidance(&self) -> Guidance {
        Guidance::new(self.cfg_scale, self.cfg_interval)
    }
}

/// The sampler settings a relay stage takes over from its training (RDM_NOTES §6.3): the
/// blur schedule and block noise it was trained with, as (key of the training's
/// [`BlurLoss`](super::loss::BlurLoss) settings, key of [`BlurSamplerConfig`]). ℓ
/// (`prob_length`) becomes the sampler's `truncation_t`.
pub const FROM_TRAINING: [(&str, &str); 6] = [
    ("up_scale", "up_scale"),
    ("blur_sigma_max", "blur_sigma_max"),
    ("prob_length", "truncation_t"),
    ("min_scale", "min_scale"),
    ("block_scale", "s_block"),
    ("block_noise", "block_noise"),
];

/// Sampler defaults from a relay stage's training settings (a JSON object such as a
/// serialised `BlurLoss`, or the `diffusion` of a model folder's `config.json`): the keys
/// of [`FROM_TRAINING`] that it has, renamed.
pub fn defaults_from_training(
    trained: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    FROM_TRAINING
        .iter()
        .filter_map(|(from, to)| Some((to.to_string(), trained.get(from)?.clone())))
        .collect()
}

/// Runs the relay stage from `latents` (the nearest-upsampled low-resolution image,
/// `[B, C, H, W]`, any float dtype; H and W divisible by `up_scale`). `labels`: one-hot
/// `[B, L]` float64 or `None`. Returns the last denoiser output, float64.
pub fn blur_sampler<N, R>(
    net: &N,
    latents: &Tensor,
    labels: Option<&Tensor>,
    cfg: &BlurSamplerConfig,
    noise: &mut R,
    mut trace: Option<&mut Trajectory>,
) -> Result<SamplerOutput>
where
    N: Denoiser + ?Sized,
    R: NoiseSource + ?Sized,
{
    let t = cfg.time_steps();
    let n = t.len() - 1;
    if n == 0 || !(1..=2).contains(&cfg.order) {
        bail!("blur_sampler: no step below truncation_sigma, or order not 1 or 2: {cfg:?}")
    }
    let (_, _, h, w) = latents.dims4()?;
    let (p, dev) = (cfg.up_scale, latents.device().clone());
    let shape = latents.dims()[1..].to_vec();
    let dct = PatchDct::new(p, DType::F64, &dev)?;
    let schedule = cfg.schedule();
    let alpha = |t: f64| schedule.alpha_t(t, p, h, w, DType::F64, &dev);
    let mut net = Evaluator::new(net, labels, cfg.guidance());
    let unit_noise = |noise: &mut R| -> Result<Tensor> {
        cfg.block_noise
            .draw(noise, &shape, p, cfg.s_block, DType::F64, &dev)
    };

    // Start from the upsampled image plus noise (and block noise) at t_0.
    let mut x = (latents.to_dtype(DType::F64)? + (unit_noise(&mut *noise)? * t[0])?)?;
    for i in 0..n {
        let t_next = t[i + 1];
        // CelebA-HQ variant: churn, drawn every step.
        let (x_hat, t_cur) = match cfg.churn {
            None => (x.clone(), t[i]),
            Some(ch) => {
                let gamma = churn_gamma(t[i], n, ch.s_churn, ch.s_min, ch.s_max);
                let th = t_hat(t[i], gamma);
                let eps = noise.randn(&shape, DType::F64, &dev)?;
                let scale = (th * th - t[i] * t[i]).sqrt() * ch.s_noise;
                ((&x + (eps * scale)?)?, th)
            }
        };
        Trajectory::push(&mut trace, &x_hat, t_cur);
        let denoised = net.denoise(&x_hat, t_cur)?;
        if i == n - 1 {
            return Ok(SamplerOutput {
                x: denoised,
                nfe: net.nfe,
                network_calls: net.network_calls,
            });
        }

        // Predictor in the DCT domain (U from x_i, not x̂_i, as the reference).
        let (alpha_cur, alpha_next) = (alpha(t_cur)?, alpha(t_next)?);
        let u_cur = dct.forward(&x)?;
        let d_cur = ((&u_cur - dct.forward(&denoised)?)? / t_cur)?;
        let gamma = (1.0 - cfg.s_noise * cfg.s_noise).sqrt() * t_next / t_cur;
        // A and K of the module doc: the mean is IDCT(A + K⊙d).
        let a = ((&alpha_next + gamma)? - (&alpha_cur * gamma)?)?.broadcast_mul(&u_cur)?;
        let k = ((&alpha_cur * gamma)? - &alpha_next)?.affine(t_cur, 0.0)?;
        let fresh = cfg.s_noise * t_next;
        let x_pred = (dct.inverse(&(&a + k.broadcast_mul(&d_cur)?)?)?
            + (unit_noise(&mut *noise)? * fresh)?)?;
        if cfg.order == 1 {
            x = x_pred;
            continue;
        }

        // Apply 2nd order correction, with fresh noise.
        let u_pred = dct.forward(&x_pred)?;
        let denoised = net.denoise(&x_pred, t_next)?;
        let d_prime = ((u_pred - dct.forward(&denoised)?)? / t_next)?;
        let d_avg = ((d_cur + d_prime)? / 2.0)?;
        x = (dct.inverse(&(a + k.broadcast_mul(&d_avg)?)?)? + (unit_noise(&mut *noise)? * fresh)?)?;
    }
    unreachable!("the loop returns at its last step")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::SeedNoise;
    use candle_core::Device;

    #[test]
    fn upsample_repeats_pixels() -> Result<()> {
        let x = Tensor::new(&[[[[1f64, 2.], [3., 4.]]]], &Device::Cpu)?;
        let y = upsample_nearest(&x, 2)?.get(0)?.get(0)?.to_vec2::<f64>()?;
        assert_eq!(y[1], vec![1., 1., 2., 2.]);
        assert_eq!(y[2], vec![3., 3., 4., 4.]);
        Ok(())
    }

    /// NFE 2n − 1 and 4 draws per step but the last, plus 2 at the start; the CelebA-HQ
    /// variant adds one per step. Works at up_scale 2 on a non-square image.
    #[test]
    fn counts() -> Result<()> {
        let net = |x: &Tensor, _s: &Tensor, _l: Option<&Tensor>| x.affine(0.5, 0.0);
        let latents = Tensor::zeros((2, 3, 4, 6), DType::F32, &Device::Cpu)?;
        let cfg = BlurSamplerConfig {
            up_scale: 2,
            ..Default::default()
        };
        let mut noise = SeedNoise::new(&[1, 2]);
        let out = blur_sampler(&net, &latents, None, &cfg, &mut noise, None)?;
        assert_eq!((out.nfe, noise.draws()), (13, 2 + 4 * 6));
        assert_eq!(out.x.dims(), &[2, 3, 4, 6]);
        let cfg = BlurSamplerConfig {
            churn: Some(Churn::default()),
            ..cfg
        };
        let mut noise = SeedNoise::new(&[1, 2]);
        blur_sampler(&net, &latents, None, &cfg, &mut noise, None)?;
        assert_eq!(noise.draws(), 2 + 5 * 6 + 1);
        Ok(())
    }

    #[test]
    fn config_from_json() {
        let json = r#"{"num_steps": 200, "rho": 100, "cfg_scale": 3.5, "cfg_interval": [0.3, 3.0],
                       "block_noise": "paper", "churn": {"S_churn": 0}}"#;
        let c: BlurSamplerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.guidance().scale_at(1.0), 3.5);
        assert_eq!(
            (c.block_noise, c.churn.unwrap().s_max),
            (BlockNoise::Paper, f64::INFINITY)
        );
        assert_eq!(c.time_steps().len() - 1, 100);
        assert!(serde_json::from_str::<BlurSamplerConfig>(r#"{"cfg": 2}"#).is_err());
    }
}
