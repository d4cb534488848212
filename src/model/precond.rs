//! EDM preconditioning around the U-Net (Karras et al. 2022, "Elucidating the Design
//! Space of Diffusion-Based Generative Models", Table 1; edm `EDMPrecond`).
//!
//! ```text
//! c_skip = σ_d²/(σ²+σ_d²)   c_out = σ·σ_d/√(σ²+σ_d²)   c_in = 1/√(σ_d²+σ²)   c_noise = ln(σ)/4
//! D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise, labels)
//! ```
//! Like the reference, the wrapper works in float32 whatever the caller's dtype (the
//! samplers run in float64) and returns D in the caller's dtype. The network runs in the
//! dtype of its weights. `None` labels on a conditional net become one all-zero row.
//! The coefficients come from [`crate::diffusion::precond`]; this file adds the network.

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::UnetConfig;
use super::dropout::DropoutKey;
use super::unet::{DhariwalUnet, Trace};
use crate::diffusion::precond::{PrecondTensors, SIGMA_DATA};
use crate::diffusion::Denoiser;

/// D and the raw network output F of the same call, both in the input dtype.
#[derive(Debug, Clone)]
pub struct PrecondOutput {
    pub d: Tensor,
    pub f: Tensor,
}

/// EDM's `EDMPrecond` with `model_type = "DhariwalUNet"`.
#[derive(Debug, Clone)]
pub struct EdmPrecond {
    unet: DhariwalUnet,
    /// Expected standard deviation of the training data (σ_d).
    pub sigma_data: f64,
    dtype: DType,
}

impl EdmPrecond {
    /// EDM's default σ_d (0.5).
    pub const SIGMA_DATA: f64 = SIGMA_DATA;

    /// `vb` is the root of an `EDMPrecond` state_dict; the U-Net lives under `model`.
    /// With a `VarBuilder::from_varmap` this creates fresh, trainable weights.
    pub fn new(vb: VarBuilder, cfg: &UnetConfig) -> Result<Self> {
        let dtype = vb.dtype();
        Ok(Self {
            unet: DhariwalUnet::new(vb.pp("model"), cfg)?,
            sigma_data: Self::SIGMA_DATA,
            dtype,
        })
    }

    pub fn with_sigma_data(mut self, sigma_data: f64) -> Self {
        self.sigma_data = sigma_data;
        self
    }

    pub fn config(&self) -> &UnetConfig {
        self.unet.config()
    }

    pub fn unet(&self) -> &DhariwalUnet {
        &self.unet
    }

    /// D(x; σ, labels) in eval mode (no dropout), in x's dtype.
    /// `x` [B, C, H, W]; `sigma` [B] (or one value for the whole batch); `labels` one-hot
    /// [B, L] or `None`.
    pub fn forward(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run(x, sigma, labels, None, None, None)?.d)
    }

    /// D and F of one eval call.
    pub fn forward_with_f(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<PrecondOutput> {
        self.run(x, sigma, labels, None, None, None)
    }

    /// D and F of one eval call, recording the intermediates into `trace`.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
        trace: &mut Trace,
    ) -> Result<PrecondOutput> {
        self.run(x, sigma, labels, None, None, Some(trace))
    }

    /// D for training: dropout on, each label dropped with probability `label_dropout`
    /// (classifier-free guidance), all masks drawn from `key` (so a step can be
    /// replayed exactly); `augment_labels` [B, augment_dim] fed to `map_augment` when the
    /// net has one. Differentiable with respect to the weights.
    pub fn forward_train(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        key: DropoutKey,
    ) -> Result<Tensor> {
        Ok(self
            .run(x, sigma, labels, augment_labels, Some(key), None)?
            .d)
    }

    /// c_noise = ln(σ)/4 as the network receives it ([B], float32).
    pub fn c_noise(sigma: &Tensor) -> Result<Tensor> {
        Ok(PrecondTensors::new(&sigma.to_dtype(DType::F32)?, SIGMA_DATA)?.c_noise)
    }

    fn run(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        dropout: Option<DropoutKey>,
        trace: Option<&mut Trace>,
    ) -> Result<PrecondOutput> {
        let out_dtype = x.dtype();
        let b = x.dim(0)?;
        let x = x.to_dtype(DType::F32)?;
        let sigma = sigma.to_dtype(DType::F32)?.flatten_all()?;
        let sigma = match sigma.dim(0)? {
            n if n == b => sigma,
            1 => sigma.broadcast_as(b)?.contiguous()?,
            n => bail!("EdmPrecond: {n} sigmas for a batch of {b}"),
        };

        // 1. Labels: ignored by an unconditional net; None → one zero row (broadcast).
        let label_dim = self.config().label_dim;
        let labels = match (label_dim, labels) {
            (0, _) => None,
            (l, None) => Some(Tensor::zeros((1, l), self.dtype, x.device())?),
            (l, Some(t)) => Some(t.to_dtype(self.dtype)?.reshape(((), l))?),
        };

        // 2. Preconditioning coefficients (Table 1), float32, per sample.
        let c = PrecondTensors::new(&sigma, self.sigma_data)?;
        let per_sample = |t: &Tensor| t.reshape((b, 1, 1, 1));
        let (c_skip, c_out, c_in) = (
            per_sample(&c.c_skip)?,
            per_sample(&c.c_out)?,
            per_sample(&c.c_in)?,
        );

        // 3. F = network(c_in·x, c_noise, labels), in the weights' dtype.
        let x_in = x.broadcast_mul(&c_in)?.to_dtype(self.dtype)?;
        let c_noise = c.c_noise.to_dtype(self.dtype)?;
        let augment = match augment_labels {
            Some(a) => Some(a.to_dtype(self.dtype)?),
            None => None,
        };
        let f = match trace {
            Some(t) => self
                .unet
                .forward_traced(&x_in, &c_noise, labels.as_ref(), t)?,
            None => {
                self.unet
                    .forward(&x_in, &c_noise, labels.as_ref(), augment.as_ref(), dropout)?
            }
        };
        let f = f.to_dtype(DType::F32)?;

        // 4. D = c_skip·x + c_out·F.
        let d = (x.broadcast_mul(&c_skip)? + f.broadcast_mul(&c_out)?)?;
        Ok(PrecondOutput {
            d: d.to_dtype(out_dtype)?,
            f: f.to_dtype(out_dtype)?,
        })
    }
}

impl Denoiser for EdmPrecond {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.forward(x, sigma, labels)
    }

    fn label_dim(&self) -> usize {
        self.config().label_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// Fresh ADM weights zero `out_conv`, so F ≡ 0 and D = c_skip·x = σ_d²/(σ²+σ_d²)·x,
    /// the exact denoiser of N(0, σ_d²) data (STYLE.md §5). Checked in float64 as the
    /// samplers call it.
    #[test]
    fn fresh_weights_give_the_skip_only_denoiser() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let cfg = UnetConfig::tiny().with_resolution(16).with_label_dim(4);
        let net = EdmPrecond::new(vb, &cfg)?;
        let x = Tensor::randn(0f64, 1., (2, 3, 16, 16), &dev)?;
        let sigma = Tensor::new(&[0.3f64, 7.0], &dev)?;
        let labels = Tensor::new(&[[0f64, 1., 0., 0.], [0., 0., 0., 1.]], &dev)?;
        for l in [Some(&labels), None] {
            let d = net.denoise(&x, &sigma, l)?;
            assert_eq!(d.dtype(), DType::F64);
            for (i, s) in [0.3f64, 7.0].iter().enumerate() {
                let c_skip = 0.25 / (s * s + 0.25);
                let expected = (x.get(i)? * c_skip)?;
                let err = (d.get(i)? - &expected)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?;
                let scale = expected.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(err <= 1e-6 * scale, "sample {i}: {err}");
            }
        }
        // Training mode runs too (dropout / label dropout), and is still c_skip·x at init.
        let d = net.forward_train(&x, &sigma, Some(&labels), None, DropoutKey(0))?;
        assert_eq!(d.dims(), x.dims());
        Ok(())
    }
}
