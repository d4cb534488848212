//! RDM's blurring operator and its schedule (Teng et al. 2024, arXiv 2309.03350; `RelayDiffusion:
//! training/loss.py DCTBlur`, `blurring.py get_alpha_t`).
//!
//! Heat dissipation for time σ_b²/2 inside every p×p tile, with an attenuation floor m:
//! ```text
//! f_k = π k / p,   M(σ_b)[k_h,k_w] = (1 − m)·exp(−(f_{k_h}² + f_{k_w}²)·σ_b²/2) + m
//! blur(x) = IDCT_p(DCT_p(x) ⊙ M(σ_b))        (the same pattern in every tile)
//! ```
//! The blur level follows the noise level through the quantile of EDM's training
//! distribution of σ: u(t) = Φ((ln t − P_mean)/P_std)/ℓ, σ_b = σ_b,max·sin²(πu/2).
//!
//! Patterns are computed on the host in f64 and cast to the tensor's dtype. (The reference
//! builds its frequency grid in float32, ≈ 2e-7 relative; the golden `*_code` outputs allow
//! 1e-5, so no float32 emulation is needed.)

use super::dct::PatchDct;
use super::schedule::{normal_cdf, P_MEAN, P_STD};
use candle_core::{bail, DType, Device, Result, Tensor};

/// m, the attenuation floor of every AC coefficient.
pub const MIN_SCALE: f64 = 0.001;

/// M(σ_b), row-major p×p: `m[k_h * p + k_w]`.
pub fn scale_pattern(p: usize, blur_sigma: f64, min_scale: f64) -> Vec<f64> {
    let f = |k: usize| std::f64::consts::PI * k as f64 / p as f64;
    let heat_t = blur_sigma * blur_sigma / 2.0;
    let mut m = Vec::with_capacity(p * p);
    for kh in 0..p {
        for kw in 0..p {
            let f2 = f(kh) * f(kh) + f(kw) * f(kw);
            m.push((-f2 * heat_t).exp() * (1.0 - min_scale) + min_scale);
        }
    }
    m
}

/// A p×p pattern repeated over an `h`×`w` plane (row-major): `out[i, j] = m[i mod p, j mod p]`.
pub fn tile_pattern(pattern: &[f64], p: usize, h: usize, w: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            out.push(pattern[(i % p) * p + j % p]);
        }
    }
    out
}

/// `DCTBlur(x, p, σ_b, m)`: `x: [B, C, H, W]`; `blur_sigmas` holds one σ_b for the whole
/// batch or one per sample.
pub fn dct_blur(x: &Tensor, p: usize, blur_sigmas: &[f64], min_scale: f64) -> Result<Tensor> {
    let dct = PatchDct::new(p, x.dtype(), x.device())?;
    dct_blur_with(&dct, x, blur_sigmas, min_scale)
}

/// [`dct_blur`] with a prepared transform.
pub fn dct_blur_with(
    dct: &PatchDct,
    x: &Tensor,
    blur_sigmas: &[f64],
    min_scale: f64,
) -> Result<Tensor> {
    let (b, _c, h, w) = x.dims4()?;
    let p = dct.patch_size();
    let rows = match blur_sigmas.len() {
        1 => 1,
        n if n == b => b,
        n => bail!("DCTBlur: {n} blur sigmas for a batch of {b}"),
    };
    let mut scale = Vec::with_capacity(rows * h * w);
    for &s in blur_sigmas {
        scale.extend(tile_pattern(&scale_pattern(p, s, min_scale), p, h, w));
    }
    let scale = host_tensor(scale, &[rows, 1, h, w], x.dtype(), x.device())?;
    dct.inverse(&dct.forward(x)?.broadcast_mul(&scale)?)
}

/// The blur schedule: noise level t ↦ quantile u ↦ blur σ_b ↦ attenuation pattern α.
///
/// Defaults are ImageNet's (`get_alpha_t` defaults, `train.py`): ℓ = 0.93, σ_b,max = 3. The
/// CelebA-HQ model is trained with ℓ = 0.89, σ_b,max = 2 and sampled with ℓ = 1.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurSchedule {
    /// ℓ: `prob_length` in training, `truncation_t` in the sampler.
    pub prob_length: f64,
    pub blur_sigma_max: f64,
    pub min_scale: f64,
    pub p_mean: f64,
    pub p_std: f64,
}

impl Default for BlurSchedule {
    fn default() -> Self {
        Self {
            prob_length: 0.93,
            blur_sigma_max: 3.0,
            min_scale: MIN_SCALE,
            p_mean: P_MEAN,
            p_std: P_STD,
        }
    }
}

impl BlurSchedule {
    /// u(t) = Φ((ln t − P_mean)/P_std) / ℓ.
    pub fn u(&self, t: f64) -> f64 {
        normal_cdf((t.ln() - self.p_mean) / self.p_std) / self.prob_length
    }

    /// σ_b(u) = σ_b,max · sin²(π u / 2).
    pub fn blur_sigma_of_u(&self, u: f64) -> f64 {
        let s = (u * std::f64::consts::PI / 2.0).sin();
        self.blur_sigma_max * s * s
    }

    /// σ_b at noise level t.
    pub fn blur_sigma(&self, t: f64) -> f64 {
        self.blur_sigma_of_u(self.u(t))
    }

    /// α(t) = M(σ_b(t)), the p×p pattern (row-major).
    pub fn alpha_pattern(&self, t: f64, p: usize) -> Vec<f64> {
        scale_pattern(p, self.blur_sigma(t), self.min_scale)
    }

    /// `get_alpha_t`: α(t) tiled over an `h`×`w` plane, as a `[1, 1, h, w]` tensor that
    /// multiplies DCT coefficients.
    pub fn alpha_t(
        &self,
        t: f64,
        p: usize,
        h: usize,
        w: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let plane = tile_pattern(&self.alpha_pattern(t, p), p, h, w);
        host_tensor(plane, &[1, 1, h, w], dtype, device)
    }
}

/// An f64 host buffer as a tensor of `dtype` on `device`.
pub(crate) fn host_tensor(
    v: Vec<f64>,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_keeps_dc_and_floors_ac() {
        let m = scale_pattern(4, 100.0, MIN_SCALE);
        assert_eq!(m[0], 1.0);
        assert!(m[1..].iter().all(|&v| (v - MIN_SCALE).abs() < 1e-15));
        assert!(scale_pattern(4, 0.0, MIN_SCALE)
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-15));
    }

    /// RDM_NOTES §3: at u = 1 the lowest AC frequency π/4 keeps 0.063 (σ_b,max = 3).
    #[test]
    fn maximum_blur_of_lowest_frequency() {
        let s = BlurSchedule::default();
        let m = scale_pattern(4, s.blur_sigma_of_u(1.0), s.min_scale);
        assert!((m[1] - 0.063).abs() < 5e-4, "{}", m[1]);
    }

    /// Blurring preserves every tile's mean, and σ_b = 0 is the identity.
    #[test]
    fn blur_keeps_patch_means() -> Result<()> {
        let v: Vec<f64> = (0..2 * 8 * 12)
            .map(|i| ((i * 29 % 53) as f64) / 7.0)
            .collect();
        let x = Tensor::from_vec(v, (2, 1, 8, 12), &Device::Cpu)?;
        let y = dct_blur(&x, 4, &[1.5, 30.0], MIN_SCALE)?;
        let means = |t: &Tensor| -> Result<Vec<f64>> {
            t.reshape((2, 2, 4, 3, 4))?
                .sum(4)?
                .sum(2)?
                .flatten_all()?
                .to_vec1::<f64>()
        };
        for (a, b) in means(&x)?.iter().zip(means(&y)?) {
            assert!((a - b).abs() < 1e-12);
        }
        let same = dct_blur(&x, 4, &[0.0], MIN_SCALE)?;
        let err = (same - &x)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(err < 1e-13);
        Ok(())
    }
}
