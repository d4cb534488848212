//! The FID Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture"), as
//! the 2015-12-05 TensorFlow graph that FID, sFID, IS and precision/recall are defined on,
//! in the form pytorch-fid ported it (`pt_inception-2015-12-05-6726825d.pth`).
//!
//! 1. Input: uint8 images [N, H, W, 3] → float [0, 1] → bilinear resize to 299×299
//!    (`align_corners=False`, no antialiasing: pytorch-fid's `F.interpolate`) → 2x − 1.
//! 2. Stem: five convolutions and two max pools (299 → 35).
//! 3. Mixed_5b..5d (A), Mixed_6a (B), Mixed_6b..6e (C), Mixed_7a (D), Mixed_7b/7c (E).
//! 4. Outputs ([`Features`]), as ADM's evaluator takes them from the graph:
//!    * `pool`: `pool_3`, the 2048 global-average-pooled channels (FID, precision/recall);
//!    * `spatial`: `mixed_6/conv` (Mixed_6d's `branch1x1`) channels 0..7 at 17×17,
//!      flattened in TF's (h, w, c) order, 2023 values (sFID);
//!    * `logits`: `softmax/logits/MatMul`, pool3 · fcᵀ *without* the bias (IS); `None` for a
//!      weights file without the classifier.
//!
//! Where this differs from the TF graph (and so from ADM's own reference statistics): the
//! graph resizes with TF1's `ResizeBilinear` (no half-pixel centres) and maps pixels to
//! [−1, 0.9921875] (`(x − 128) / 128`); pytorch-fid, and relay, use PyTorch's half-pixel
//! bilinear resize and [−1, 1]. The network weights and layers are the same.
//!
//! Weights come from [`weights`] (pytorch-fid's `.pth`, or a `.safetensors` with the same
//! names); [`synthetic`] makes a deterministic stand-in with the same names and shapes for
//! tests and benchmarks. Batch norms are folded into the convolutions when loading.

pub mod blocks;
pub mod pth;
pub mod synthetic;
pub mod weights;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use blocks::{
    global_avg_pool, max_pool_3x3_s2, ConvBn, InceptionA, InceptionB, InceptionC, InceptionD,
    InceptionE, Pool,
};

/// Side of the network's input.
pub const INPUT_SIZE: usize = 299;
/// Width of `pool_3`.
pub const POOL_DIMS: usize = 2048;
/// Channels of `mixed_6/conv` kept for sFID (ADM's evaluator: `[..., :7]`).
pub const SPATIAL_CHANNELS: usize = 7;
/// 17 × 17 × 7.
pub const SPATIAL_DIMS: usize = 17 * 17 * SPATIAL_CHANNELS;
/// Classes of the graph's softmax (1001 used, 7 padding).
pub const LOGITS_DIMS: usize = 1008;

/// One batch's features (float32, on the network's device).
#[derive(Debug, Clone)]
pub struct Features {
    /// [N, 2048].
    pub pool: Tensor,
    /// [N, 2023].
    pub spatial: Tensor,
    /// [N, 1008], when the weights have the classifier.
    pub logits: Option<Tensor>,
}

/// The network. Build it from a `VarBuilder` over pytorch-fid's state dict.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: [ConvBn; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7: [InceptionE; 2],
    /// `fc.weight` [1008, 2048], transposed to [2048, 1008].
    fc_t: Option<Tensor>,
    /// The type it computes in (float32; float64 in the reference test).
    dtype: DType,
}

impl FidInception {
    /// `with_classifier`: read `fc.weight` (needed for the Inception Score only).
    pub fn new(vb: VarBuilder, with_classifier: bool) -> Result<Self> {
        let c = |name: &str, io, k, stride, pad| ConvBn::new(vb.pp(name), io, k, stride, pad);
        let stem = [
            c("Conv2d_1a_3x3", (3, 32), (3, 3), 2, (0, 0))?,
            c("Conv2d_2a_3x3", (32, 32), (3, 3), 1, (0, 0))?,
            c("Conv2d_2b_3x3", (32, 64), (3, 3), 1, (1, 1))?,
            c("Conv2d_3b_1x1", (64, 80), (1, 1), 1, (0, 0))?,
            c("Conv2d_4a_3x3", (80, 192), (3, 3), 1, (0, 0))?,
        ];
        let fc_t = if with_classifier {
            Some(
                vb.pp("fc")
                    .get((LOGITS_DIMS, POOL_DIMS), "weight")?
                    .t()?
                    .contiguous()?,
            )
        } else {
            None
        };
        Ok(Self {
            stem,
            mixed_5: [
                InceptionA::new(vb.pp("Mixed_5b"), 192, 32)?,
                InceptionA::new(vb.pp("Mixed_5c"), 256, 64)?,
                InceptionA::new(vb.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed_6a: InceptionB::new(vb.pp("Mixed_6a"), 288)?,
            mixed_6: [
                InceptionC::new(vb.pp("Mixed_6b"), 768, 128)?,
                InceptionC::new(vb.pp("Mixed_6c"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6d"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed_7a: InceptionD::new(vb.pp("Mixed_7a"), 768)?,
            mixed_7: [
                InceptionE::new(vb.pp("Mixed_7b"), 1280, Pool::Avg)?,
                InceptionE::new(vb.pp("Mixed_7c"), 2048, Pool::Max)?,
            ],
            fc_t,
            dtype: vb.dtype(),
        })
    }

    pub fn has_classifier(&self) -> bool {
        self.fc_t.is_some()
    }

    /// Features of uint8 images [N, H, W, 3] (any size; resized to 299).
    pub fn forward_images(&self, images: &Tensor) -> Result<Features> {
        let x = images
            .to_dtype(self.dtype)?
            .permute((0, 3, 1, 2))?
            .affine(1.0 / 255.0, 0.0)?;
        self.forward(&x)
    }

    /// Features of float images [N, 3, H, W] in [0, 1] (pytorch-fid's input).
    pub fn forward(&self, x: &Tensor) -> Result<Features> {
        // 1. Resize and scale.
        let (_, c, h, w) = x.dims4()?;
        if c != 3 {
            candle_core::bail!("the Inception takes 3-channel images, got {c}");
        }
        let x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            x.contiguous()?
        } else {
            x.contiguous()?
                .upsample_bilinear2d(INPUT_SIZE, INPUT_SIZE, false)?
        };
        let mut x = x.affine(2.0, -1.0)?;

        // 2. Stem.
        for (i, conv) in self.stem.iter().enumerate() {
            x = conv.forward(&x)?;
            if i == 2 || i == 4 {
                x = max_pool_3x3_s2(&x)?;
            }
        }

        // 3. Mixed blocks; the spatial features come out of Mixed_6d.
        for block in &self.mixed_5 {
            x = block.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        let mut spatial = None;
        for (i, block) in self.mixed_6.iter().enumerate() {
            if i == 2 {
                let (y, b1x1) = block.forward_with_1x1(&x)?;
                spatial = Some(b1x1.narrow(1, 0, SPATIAL_CHANNELS)?);
                x = y;
            } else {
                x = block.forward(&x)?;
            }
        }
        x = self.mixed_7a.forward(&x)?;
        for block in &self.mixed_7 {
            x = block.forward(&x)?;
        }

        // 4. Outputs.
        let pool = global_avg_pool(&x)?;
        let n = pool.dim(0)?;
        let spatial = spatial
            .expect("Mixed_6d ran")
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((n, SPATIAL_DIMS))?;
        let logits = match &self.fc_t {
            Some(w) => Some(pool.matmul(w)?),
            None => None,
        };
        Ok(Features {
            pool,
            spatial,
            logits,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// `tests/data/metrics/inception.safetensors` (scripts/make_inception_vectors.py).
    fn vectors() -> HashMap<String, Tensor> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/metrics/inception.safetensors"
        );
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    }

    /// max |a − b| over an image's row, relative to max |b|; the worst row.
    fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let g: Vec<Vec<f64>> = got.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
        let w: Vec<Vec<f64>> = want.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
        let mut worst = 0f64;
        for (g, w) in g.iter().zip(&w) {
            let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
            let diff = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(diff / scale);
        }
        worst
    }

    #[test]
    fn matches_pytorch_fid_with_formula_weights() {
        let v = vectors();
        let stats: HashMap<String, Tensor> = v
            .iter()
            .filter(|(k, _)| k.contains(".bn.running_"))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        assert_eq!(stats.len(), 94 * 2);
        let w = synthetic::weights(&stats).unwrap();
        // The expected outputs are pytorch-fid's network in float64. In float64 we must
        // agree to round-off; in float32 as closely as pytorch-fid's own float32 run does
        // (1.1e-4 on pool3, 3e-5 to 8e-5 on the others: the script prints them).
        for (dtype, tol) in [(DType::F64, 1e-6), (DType::F32, 3e-4)] {
            let net = weights::build_as(w.clone(), "synthetic", true, dtype, &Device::Cpu).unwrap();
            for tag in ["a", "b"] {
                let f = net.forward_images(&v[&format!("images_{tag}")]).unwrap();
                let pool = rel_err(&f.pool, &v[&format!("pool_{tag}")]);
                let spatial = rel_err(&f.spatial, &v[&format!("spatial_{tag}")]);
                let logits = rel_err(f.logits.as_ref().unwrap(), &v[&format!("logits_{tag}")]);
                assert!(
                    pool < tol && spatial < tol && logits < tol,
                    "{dtype:?} images_{tag}: relative errors pool {pool:e}, spatial {spatial:e}, logits {logits:e}"
                );
            }
        }
    }
}
