//! Seeded dropout: every mask is a function of a key, so a training step draws the same
//! masks whenever it runs (exact resume, also with `dropout > 0`).
//!
//! A training forward pass gets one [`DropoutKey`] (the trainer derives it from the seed,
//! the step, the rank and the micro-batch); each module that drops derives its own child
//! key. On the CPU the mask comes from the crate's Philox streams
//! ([`crate::diffusion::rng::Stream`]); on CUDA from cuRAND seeded with the key just
//! before the draw (candle's CPU generator cannot be seeded). Both are reproducible; they
//! are not the same numbers on the two devices.

use candle_core::{DType, Device, Result, Shape, Tensor};

use crate::diffusion::rng::{mix, Stream};

/// The key of a training forward pass (or of one module inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey(pub u64);

impl DropoutKey {
    /// The key of part `i` of whatever `self` keys (a block of the U-Net, say).
    pub fn child(self, i: u64) -> Self {
        Self(mix(&[self.0, i]))
    }
}

/// Uniform [0, 1) numbers of `shape`, float32, drawn from `key` on `dev`.
fn uniform(shape: &Shape, key: DropoutKey, dev: &Device) -> Result<Tensor> {
    match dev {
        Device::Cpu => {
            let n = shape.elem_count();
            let u: Vec<f32> = Stream::new(key.0)
                .uniform(n)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            Tensor::from_vec(u, shape, dev)
        }
        _ => {
            dev.set_seed(key.0)?;
            Tensor::rand(0f32, 1f32, shape, dev)
        }
    }
}

/// 1 where `rand >= p` (kept, probability 1 − p), else 0, in `dtype`, as the reference's
/// `torch.rand(...) >= p`.
pub fn keep_mask(
    shape: impl Into<Shape>,
    p: f64,
    key: DropoutKey,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    uniform(&shape.into(), key, dev)?
        .ge(p as f32)?
        .to_dtype(dtype)
}

/// Inverted dropout (`torch.nn.functional.dropout` in training mode): each element kept
/// with probability 1 − p and scaled by 1/(1 − p).
pub fn dropout(x: &Tensor, p: f32, key: DropoutKey) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let mask = keep_mask(x.shape(), p as f64, key, x.dtype(), x.device())?;
    x.mul(&(mask * (1.0 / (1.0 - p as f64)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gives_the_same_mask_and_children_differ() -> Result<()> {
        let x = Tensor::ones((4, 8, 16, 16), DType::F32, &Device::Cpu)?;
        let k = DropoutKey(7);
        let a = dropout(&x, 0.25, k.child(3))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = dropout(&x, 0.25, k.child(3))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = dropout(&x, 0.25, k.child(4))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Kept elements are scaled by 1/(1 − p); the kept fraction is near 1 − p.
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let kept = a.iter().filter(|&&v| v > 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
        Ok(())
    }
}
