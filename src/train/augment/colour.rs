//! The colour half of the augmentation pipe (edm `training/augment.py`, "Select parameters
//! for color transformations" / "Execute color transformations"): brightness, contrast,
//! luma flip, hue rotation about the luma axis and saturation, composed into one 4×4
//! homogeneous matrix per image (float32 on the host) and applied per pixel on the
//! images' device. Off at RDM's settings; checked by `tests/data/augment_extra`.

use candle_core::{bail, Result, Tensor};

use super::matrix::{luma_axis, mul4, outer4, rotate3d, scale3d, translate3d, Mat4, I4};
use super::{chosen, keep, push_column, AugmentPipe, AugmentRng};

/// Draws the colour parameters; returns each image's matrix and whether any colour
/// transform is enabled.
pub(super) fn colour_matrices(
    pipe: &AugmentPipe,
    n: usize,
    labels: &mut [Vec<f32>],
    rng: &mut dyn AugmentRng,
) -> Result<(Vec<Mat4>, bool)> {
    let p = pipe.p;
    let mut m = vec![I4; n];
    let luma = luma_axis();
    let ll = outer4(&luma);
    if pipe.brightness > 0.0 {
        let r = rng.randn(1)?;
        let wv = keep(&r, &chosen(&rng.rand(1)?, pipe.brightness, p), 1);
        for (mb, &wb) in m.iter_mut().zip(&wv) {
            let b = wb * pipe.brightness_std as f32;
            *mb = mul4(&translate3d(b, b, b), mb);
        }
        push_column(labels, &wv);
    }
    if pipe.contrast > 0.0 {
        let r = rng.randn(1)?;
        let wv = keep(&r, &chosen(&rng.rand(1)?, pipe.contrast, p), 1);
        for (mb, &wb) in m.iter_mut().zip(&wv) {
            let c = (wb * pipe.contrast_std as f32).exp2();
            *mb = mul4(&scale3d(c, c, c), mb);
        }
        push_column(labels, &wv);
    }
    if pipe.lumaflip > 0.0 {
        let r = rng.randint(2, 1)?;
        let wv = keep(&r, &chosen(&rng.rand(1)?, pipe.lumaflip, p), 1);
        for (mb, &wb) in m.iter_mut().zip(&wv) {
            let mut f = I4;
            for (i, row) in f.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v -= 2.0 * ll[i][j] * wb as f32;
                }
            }
            *mb = mul4(&f, mb);
        }
        push_column(labels, &wv.iter().map(|&v| v as f32).collect::<Vec<_>>());
    }
    if pipe.hue > 0.0 {
        let range = (std::f64::consts::PI * pipe.hue_max) as f32;
        let r: Vec<f32> = rng
            .rand(1)?
            .iter()
            .map(|u| (u * 2.0 - 1.0) * range)
            .collect();
        let wv = keep(&r, &chosen(&rng.rand(1)?, pipe.hue, p), 1);
        for (mb, &wb) in m.iter_mut().zip(&wv) {
            *mb = mul4(&rotate3d([luma[0], luma[1], luma[2]], wb), mb);
        }
        push_column(
            labels,
            &wv.iter().map(|w| w.cos() - 1.0).collect::<Vec<_>>(),
        );
        push_column(labels, &wv.iter().map(|w| w.sin()).collect::<Vec<_>>());
    }
    if pipe.saturation > 0.0 {
        let r = rng.randn(1)?;
        let wv = keep(&r, &chosen(&rng.rand(1)?, pipe.saturation, p), 1);
        for (mb, &wb) in m.iter_mut().zip(&wv) {
            let s = (wb * pipe.saturation_std as f32).exp2();
            let mut f = [[0f32; 4]; 4];
            for (i, row) in f.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = ll[i][j] + (I4[i][j] - ll[i][j]) * s;
                }
            }
            *mb = mul4(&f, mb);
        }
        push_column(labels, &wv);
    }
    let colour = [
        pipe.brightness,
        pipe.contrast,
        pipe.lumaflip,
        pipe.hue,
        pipe.saturation,
    ]
    .iter()
    .any(|&v| v > 0.0);
    Ok((m, colour))
}

/// images ← M[:3, :3]·images + M[:3, 3] per pixel (RGB), or the mean of the three rows
/// for one channel.
pub(super) fn apply_colour(x: &Tensor, m: &[Mat4]) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (dt, dev) = (x.dtype(), x.device());
    let flat = x.reshape((n, c, h * w))?;
    let y = match c {
        3 => {
            let lin: Vec<f32> = m
                .iter()
                .flat_map(|mb| (0..3).flat_map(move |i| mb[i][..3].to_vec()))
                .collect();
            let off: Vec<f32> = m
                .iter()
                .flat_map(|mb| (0..3).map(move |i| mb[i][3]))
                .collect();
            let lin = Tensor::from_vec(lin, (n, 3, 3), dev)?.to_dtype(dt)?;
            let off = Tensor::from_vec(off, (n, 3, 1), dev)?.to_dtype(dt)?;
            lin.matmul(&flat.contiguous()?)?.broadcast_add(&off)?
        }
        1 => {
            let mean = |mb: &Mat4, j: usize| (mb[0][j] + mb[1][j] + mb[2][j]) / 3.0;
            let gain: Vec<f32> = m
                .iter()
                .map(|mb| mean(mb, 0) + mean(mb, 1) + mean(mb, 2))
                .collect();
            let off: Vec<f32> = m.iter().map(|mb| mean(mb, 3)).collect();
            let gain = Tensor::from_vec(gain, (n, 1, 1), dev)?.to_dtype(dt)?;
            let off = Tensor::from_vec(off, (n, 1, 1), dev)?.to_dtype(dt)?;
            flat.broadcast_mul(&gain)?.broadcast_add(&off)?
        }
        c => bail!("colour augmentation needs RGB (3 channels) or L (1 channel) images, got {c}"),
    };
    y.reshape((n, c, h, w))
}
