//! Diffusion math (EDM and relay/blurring diffusion): candle tensors in, tensors out.
//! No files, no YAML, no tokio.

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
