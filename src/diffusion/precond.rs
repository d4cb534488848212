//! EDM preconditioning: Karras et al. 2022, Table 1 (edm: `training/networks.py EDMPrecond`,
//! copied unchanged in `RelayDiffusion: training/networks.py`).
//!
//! ```text
//! c_skip = σ_d²/(σ²+σ_d²)   c_out = σ σ_d/√(σ²+σ_d²)   c_in = 1/√(σ²+σ_d²)   c_noise = ln(σ)/4
//! D(x; σ) = c_skip x + c_out F(c_in x, c_noise)
//! ```
//! Scalar versions (f64) for schedules and tests, tensor versions for the network wrapper.
//! This file knows nothing about the network F itself.

use candle_core::{Result, Tensor};

/// σ_d, the standard deviation of the data (images in [−1, 1]).
pub const SIGMA_DATA: f64 = 0.5;

/// The four preconditioning coefficients at one noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precond {
    pub c_skip: f64,
    pub c_out: f64,
    pub c_in: f64,
    pub c_noise: f64,
}

impl Precond {
    /// Karras et al. 2022, Table 1 ("Ours").
    pub fn new(sigma: f64, sigma_data: f64) -> Self {
        let var = sigma * sigma + sigma_data * sigma_data;
        Self {
            c_skip: sigma_data * sigma_data / var,
            c_out: sigma * sigma_data / var.sqrt(),
            c_in: 1.0 / var.sqrt(),
            c_noise: sigma.ln() / 4.0,
        }
    }
}

/// The coefficients as tensors, each with the shape and dtype of `sigma`.
#[derive(Debug, Clone)]
pub struct PrecondTensors {
    pub c_skip: Tensor,
    pub c_out: Tensor,
    pub c_in: Tensor,
    pub c_noise: Tensor,
}

impl PrecondTensors {
    /// `sigma`: any shape (usually `[B]`), any float dtype; computed in that dtype, the way
    /// `EDMPrecond.forward` computes them in float32.
    pub fn new(sigma: &Tensor, sigma_data: f64) -> Result<Self> {
        let sd2 = sigma_data * sigma_data;
        let var = sigma.sqr()?.affine(1.0, sd2)?;
        let std = var.sqrt()?;
        Ok(Self {
            c_skip: var.recip()?.affine(sd2, 0.0)?,
            c_out: (sigma / &std)?.affine(sigma_data, 0.0)?,
            c_in: std.recip()?,
            c_noise: sigma.log()?.affine(0.25, 0.0)?,
        })
    }
}

/// D(x; σ) = c_skip x + c_out F(c_in x, c_noise), with `x: [B, ...]` and `sigma: [B]` in the
/// same dtype. `f` is the raw network F; it receives the scaled input and `c_noise` (`[B]`).
pub fn precondition<F>(x: &Tensor, sigma: &Tensor, sigma_data: f64, f: F) -> Result<Tensor>
where
    F: FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
{
    let c = PrecondTensors::new(sigma, sigma_data)?;
    let per_sample = per_sample_shape(x)?;
    let c_skip = c.c_skip.reshape(per_sample.as_slice())?;
    let c_out = c.c_out.reshape(per_sample.as_slice())?;
    let c_in = c.c_in.reshape(per_sample.as_slice())?;
    let f_x = f(&x.broadcast_mul(&c_in)?, &c.c_noise)?;
    x.broadcast_mul(&c_skip)? + f_x.broadcast_mul(&c_out)?
}

/// `[B, 1, 1, ...]` with as many ones as `x` has trailing dimensions: the shape that
/// broadcasts a per-sample `[B]` vector over `x`.
pub fn per_sample_shape(x: &Tensor) -> Result<Vec<usize>> {
    let mut shape = vec![1; x.rank()];
    shape[0] = x.dim(0)?;
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn scalar_matches_tensor() -> Result<()> {
        let sigmas = [0.002, 0.5, 1.0, 80.0];
        let t = Tensor::new(&sigmas, &Device::Cpu)?;
        let c = PrecondTensors::new(&t, SIGMA_DATA)?;
        for (i, &s) in sigmas.iter().enumerate() {
            let p = Precond::new(s, SIGMA_DATA);
            let got = [&c.c_skip, &c.c_out, &c.c_in, &c.c_noise]
                .map(|v| v.get(i).unwrap().to_scalar::<f64>().unwrap());
            let want = [p.c_skip, p.c_out, p.c_in, p.c_noise];
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-15 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
        Ok(())
    }

    /// With F ≡ 0, D(x, σ) = σ_d²/(σ²+σ_d²)·x: the exact denoiser for N(0, σ_d²) data.
    #[test]
    fn zero_network_is_gaussian_posterior_mean() -> Result<()> {
        let x = Tensor::ones((2, 1, 2, 2), DType::F64, &Device::Cpu)?;
        let sigma = Tensor::new(&[1.0f64, 2.0], &Device::Cpu)?;
        let d = precondition(&x, &sigma, SIGMA_DATA, |xs, _| xs.zeros_like())?;
        let v = d.flatten_all()?.to_vec1::<f64>()?;
        assert!((v[0] - 0.25 / 1.25).abs() < 1e-15);
        assert!((v[7] - 0.25 / 4.25).abs() < 1e-15);
        Ok(())
    }
}
