//! `UNetBlock` of the ADM U-Net (edm `training/networks.py`), built from [`super::layers`].

use candle_core::{Result, Tensor};

use super::dropout::{dropout as seeded_dropout, DropoutKey};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention::Attention;
use super::layers::{conv2d, group_norm, linear, resample, Conv};
use super::ops::group_norm::GroupNorm;
use super::structure::{BlockSpec, Resample, SkipKind};

/// The residual path of a block.
#[derive(Debug, Clone)]
enum Skip {
    Identity,
    Resample,
    Conv(Conv),
}

/// EDM's `UNetBlock` as `DhariwalUNet` configures it: scale-shift norm (`adaptive_scale`),
/// skip_scale 1, box resampling, no `resample_proj`, 64 channels per attention head.
#[derive(Debug, Clone)]
pub struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv,
    skip: Skip,
    attention: Option<Attention>,
    resample: Resample,
    out_channels: usize,
    dropout: f32,
}

impl UNetBlock {
    /// `vb` is the block's own prefix (`model.enc.8x8_down`).
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        emb_channels: usize,
        dropout: f64,
    ) -> Result<Self> {
        let (ci, co) = (spec.in_channels, spec.out_channels);
        let skip = match spec.skip() {
            SkipKind::Identity => Skip::Identity,
            SkipKind::Resample => Skip::Resample,
            SkipKind::Conv => Skip::Conv(conv2d(ci, co, 1, false, vb.pp("skip"))?),
        };
        let attention = if spec.num_heads > 0 {
            Some(Attention::new(&vb, co, spec.num_heads)?)
        } else {
            None
        };
        Ok(Self {
            norm0: group_norm(ci, vb.pp("norm0"))?,
            conv0: conv2d(ci, co, 3, false, vb.pp("conv0"))?,
            affine: linear(emb_channels, 2 * co, true, vb.pp("affine"))?,
            norm1: group_norm(co, vb.pp("norm1"))?,
            conv1: conv2d(co, co, 3, true, vb.pp("conv1"))?,
            skip,
            attention,
            resample: spec.resample,
            out_channels: co,
            dropout: dropout as f32,
        })
    }

    /// `x` [B, C_in, H, W], `emb` [B, E] → [B, C_out, H', W']. A `dropout` key turns
    /// dropout on (training), its masks drawn from that key.
    pub fn forward(&self, x: &Tensor, emb: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        // 1. norm0 → SiLU → (resample) → conv0.
        let h = self.norm0.forward_silu(x)?;
        let h = self.conv0.forward(&resample(&h, self.resample)?)?;

        // 2. Scale-shift norm: SiLU(shift + norm1(h)·(scale + 1)).
        let c = self.out_channels;
        let params = self.affine.forward(emb)?;
        let (scale, shift) = (params.narrow(1, 0, c)?, params.narrow(1, c, c)?);
        let h = self.norm1.forward_scale_shift_silu(&h, &scale, &shift)?;

        // 3. Dropout → conv1, plus the residual (skip_scale = 1).
        let h = match dropout {
            Some(key) if self.dropout > 0.0 => seeded_dropout(&h, self.dropout, key)?,
            _ => h,
        };
        let h = self.conv1.forward(&h)?;
        let skip = match &self.skip {
            Skip::Identity => x.clone(),
            Skip::Resample => resample(x, self.resample)?,
            Skip::Conv(conv) => conv.forward(&resample(x, self.resample)?)?,
        };
        let x = (h + skip)?;

        // 4. Self-attention, also residual.
        match &self.attention {
            Some(attn) => attn.forward(&x),
            None => Ok(x),
        }
    }
}
