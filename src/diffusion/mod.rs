//! Diffusion math (EDM and relay/blurring diffusion): candle tensors in, tensors out.
//! No files, no YAML, no tokio.
//!
//! * EDM: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
//!   NeurIPS 2022 (code: NVlabs/edm @ 008a4e5).
//! * RDM: Teng et al., "Relay Diffusion: Unifying diffusion process across resolutions for
//!   image synthesis", ICLR 2024, arXiv 2309.03350 (code: THUDM/RelayDiffusion @ a97877f).
//!
//! Where the published code and the paper disagree the code wins (see
//! `shared/reference/RDM_NOTES.md` §11); the golden vectors in `shared/golden` pin every
//! formula here number for number (`tests/golden.rs`).
//!
//! Lifecycle of a relay sample, and the module each step lives in:
//! 1. [`noise::SeedNoise`]: one counter-based stream per seed ([`rng`]), so a seed's noise
//!    never depends on the batch it was drawn in.
//! 2. [`edm_sampler::edm_sampler`]: stage 1 (pure noise → low-resolution image), on the
//!    [`schedule`] time steps, with optional classifier-free [`guidance`].
//! 3. [`blur_sampler::upsample_nearest`]: the hand-off, each pixel repeated f×f.
//! 4. [`blur_sampler::blur_sampler`]: stage 2, removing the patch-wise [`blur`] ([`dct`]) and
//!    the noise (with [`block_noise`]) together.
//!
//! Training uses [`loss::EdmLoss`] (stage 1) and [`loss::BlurLoss`] (stage 2), both on a
//! [`Denoiser`] built with [`precond`].

pub mod block_noise;
pub mod blur;
pub mod blur_sampler;
pub mod dct;
pub mod edm_sampler;
pub mod guidance;
pub mod loss;
pub mod noise;
pub mod precond;
pub mod rng;
pub mod schedule;
pub mod upsample;

use candle_core::{Result, Tensor};

/// A denoiser D(x; σ, labels): the network behind its preconditioning, or an analytic one in tests.
///
/// * `x`: `[B, C, H, W]`, in the sampler's dtype (float64 in the samplers, as the reference).
/// * `sigma`: `[B]`, same dtype and device as `x`.
/// * `labels`: one-hot `[B, L]` (same dtype), or `None` for the unconditional branch
///   (the reference feeds an all-zero label vector then).
///
/// Returns D in the dtype of `x`.
pub trait Denoiser {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor>;
    /// Number of classes (0 for an unconditional model, which ignores labels).
    fn label_dim(&self) -> usize;
}

/// Any closure `|x, sigma, labels| -> Result<Tensor>` is an unconditional denoiser
/// (`label_dim() == 0`), the way candle makes closures `Module`s. Use [`FnDenoiser`] to give a
/// closure a label dimension.
impl<F> Denoiser for F
where
    F: Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
{
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self(x, sigma, labels)
    }

    fn label_dim(&self) -> usize {
        0
    }
}

/// A closure with an explicit label dimension (for conditional analytic denoisers in tests).
pub struct FnDenoiser<F> {
    pub f: F,
    pub label_dim: usize,
}

impl<F> Denoiser for FnDenoiser<F>
where
    F: Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
{
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        (self.f)(x, sigma, labels)
    }

    fn label_dim(&self) -> usize {
        self.label_dim
    }
}

/// The (x, σ) each sampler step passes to its *first* denoiser evaluation: (x̂_i, t̂_i) for the
/// EDM samplers, (x_i, t_i) (or x̂_i, t̂_i with churn) for the blur sampler. Used to find the
/// first step where two implementations diverge; off unless the caller passes one in.
#[derive(Debug, Default, Clone)]
pub struct Trajectory {
    pub x: Vec<Tensor>,
    pub sigma: Vec<f64>,
}

impl Trajectory {
    pub(crate) fn push(trace: &mut Option<&mut Trajectory>, x: &Tensor, sigma: f64) {
        if let Some(t) = trace.as_deref_mut() {
            t.x.push(x.clone());
            t.sigma.push(sigma);
        }
    }
}

/// What a sampler returns.
#[derive(Debug, Clone)]
pub struct SamplerOutput {
    /// The sample, `[B, C, H, W]` float64.
    pub x: Tensor,
    /// Denoiser evaluations in the sampler's sense (a guided evaluation counts once):
    /// 2N − 1 for Heun over N steps.
    pub nfe: usize,
    /// Network forward passes (a guided evaluation with λ(σ) ≠ 1 costs two).
    pub network_calls: usize,
}
