//! The mapping network of `DhariwalUNet`: noise level (+ class label, + augmentation
//! label) → the embedding vector every block's `affine` layer reads.
//!
//! ```text
//! e   = [cos(c_noise·f), sin(c_noise·f)],  f_j = (1/10000)^(j/(mc/2)), j < mc/2   (cos first)
//! e  += map_augment(augment_labels)         only when augment labels are given
//! emb = SiLU( map_layer1(SiLU(map_layer0(e))) + map_label(labels) )
//! ```
//! Unlike `SongUNet`, labels enter unscaled and the cos/sin halves are not swapped
//! (golden README, "The computation").

use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};

use super::dropout::{keep_mask, DropoutKey};
use super::layers::{linear, linear_init};

/// Sinusoidal embedding of the noise label (edm `PositionalEmbedding`, endpoint = false).
#[derive(Debug, Clone)]
pub struct PositionalEmbedding {
    num_channels: usize,
    max_positions: f32,
}

impl PositionalEmbedding {
    pub fn new(num_channels: usize) -> Self {
        Self {
            num_channels,
            max_positions: 10000.0,
        }
    }

    /// `[B]` → `[B, num_channels]`.
    pub fn forward(&self, noise_labels: &Tensor) -> Result<Tensor> {
        let half = self.num_channels / 2;
        // The reference builds the table in float32 whatever the input dtype.
        let base = 1.0 / self.max_positions;
        let freqs: Vec<f32> = (0..half)
            .map(|j| base.powf(j as f32 / half as f32))
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), noise_labels.device())?
            .to_dtype(noise_labels.dtype())?;
        let x = noise_labels.unsqueeze(1)?.broadcast_mul(&freqs)?;
        Tensor::cat(&[x.cos()?, x.sin()?], 1)
    }
}

/// `map_augment`, `map_layer0`, `map_layer1`, `map_label`.
#[derive(Debug, Clone)]
pub struct Mapping {
    map_noise: PositionalEmbedding,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    map_label: Option<Linear>,
    label_dropout: f64,
}

impl Mapping {
    /// `vb` is the U-Net's root (`model.`).
    pub fn new(
        vb: &VarBuilder,
        model_channels: usize,
        emb_channels: usize,
        label_dim: usize,
        augment_dim: usize,
        label_dropout: f64,
    ) -> Result<Self> {
        let map_augment = if augment_dim > 0 {
            // Zero-initialised: augmentation conditioning starts switched off.
            let init = (Init::Const(0.), None);
            Some(linear_init(
                augment_dim,
                model_channels,
                init,
                vb.pp("map_augment"),
            )?)
        } else {
            None
        };
        let map_layer0 = linear(model_channels, emb_channels, true, vb.pp("map_layer0"))?;
        let map_layer1 = linear(emb_channels, emb_channels, true, vb.pp("map_layer1"))?;
        let map_label = if label_dim > 0 {
            // kaiming_normal · √label_dim = N(0, 1).
            let init = (
                Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
                None,
            );
            Some(linear_init(
                label_dim,
                emb_channels,
                init,
                vb.pp("map_label"),
            )?)
        } else {
            None
        };
        Ok(Self {
            map_noise: PositionalEmbedding::new(model_channels),
            map_augment,
            map_layer0,
            map_layer1,
            map_label,
            label_dropout,
        })
    }

    /// `noise_labels` [B]; `class_labels` [B, L] or [1, L] (broadcast), `None` = no label
    /// term (the same as an all-zero label: `map_label` has no bias); `augment_labels`
    /// [B, A]. With a `dropout` key (training), each sample's label is dropped with
    /// probability `label_dropout` (classifier-free guidance training), drawn from the key.
    pub fn forward(
        &self,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        dropout: Option<DropoutKey>,
    ) -> Result<Tensor> {
        let mut emb = self.map_noise.forward(noise_labels)?;
        if let (Some(map), Some(aug)) = (&self.map_augment, augment_labels) {
            emb = (emb + map.forward(&aug.to_dtype(noise_labels.dtype())?)?)?;
        }
        let emb = self.map_layer0.forward(&emb)?.silu()?;
        let mut emb = self.map_layer1.forward(&emb)?;
        if let (Some(map), Some(labels)) = (&self.map_label, class_labels) {
            let mut labels = labels.to_dtype(emb.dtype())?;
            if let Some(key) = dropout.filter(|_| self.label_dropout > 0.0) {
                let b = emb.dim(0)?;
                let keep = keep_mask((b, 1), self.label_dropout, key, emb.dtype(), emb.device())?;
                labels = labels.broadcast_mul(&keep)?;
            }
            emb = emb.broadcast_add(&map.forward(&labels)?)?;
        }
        emb.silu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// c_noise = 0 gives [cos 0, sin 0] = [1…1, 0…0]; the first frequency is 1, so
    /// column 0 is cos(c) and column mc/2 is sin(c).
    #[test]
    fn positional_embedding_is_cos_first() -> Result<()> {
        let pe = PositionalEmbedding::new(8);
        let x = Tensor::new(&[0f32, 0.5], &Device::Cpu)?;
        let e = pe.forward(&x)?.to_vec2::<f32>()?;
        assert_eq!(e[0], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
        assert!((e[1][0] - 0.5f32.cos()).abs() < 1e-7);
        assert!((e[1][4] - 0.5f32.sin()).abs() < 1e-7);
        // f_3 = 1e-4^(3/4) = 1e-3.
        assert!((e[1][7] - (0.5e-3f32).sin()).abs() < 1e-9);
        Ok(())
    }
}
