//! Preview grids written with every snapshot: what the EMA network makes from fixed seeds,
//! so grids of successive snapshots are comparable.
//!
//! * EDM stage: `edm_sampler` from the seeds 0..n (class-balanced labels when conditional).
//! * Relay stage: `blur_sampler` started from the nearest-upsampled low-resolution images of
//!   the first n training pairs; the grid shows the inputs, the samples and the real
//!   high-resolution images in three rows.
//!
//! The sampler is the stage's sampler defaults with `preview_steps` steps.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::config::{Objective, SamplerDefaults, TrainConfig};
use crate::diffusion::blur_sampler::{blur_sampler, upsample_nearest, BlurSamplerConfig};
use crate::diffusion::edm_sampler::{edm_sampler, EdmSamplerConfig};
use crate::diffusion::noise::{balanced_class_labels, one_hot, NoiseSource, SeedNoise};
use crate::model::EdmPrecond;

/// Fixed inputs of the relay preview: low-res and high-res images and their labels.
#[derive(Debug, Clone)]
pub struct RelayInputs {
    /// `[n, 3, from, from]` in [−1, 1].
    pub low: Tensor,
    /// `[n, 3, to, to]`.
    pub high: Tensor,
    pub classes: Option<Vec<usize>>,
}

/// `[B, 3, H, W]` in [−1, 1] → tiles, `(x·127.5 + 128)` clipped and truncated to uint8
/// (RDM_NOTES §8).
fn tiles(x: &Tensor) -> candle_core::Result<Vec<RgbImage>> {
    let (b, _, h, w) = x.dims4()?;
    let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let plane = h * w;
    Ok((0..b)
        .map(|i| {
            RgbImage::from_fn(w as u32, h as u32, |px, py| {
                let p = py as usize * w + px as usize;
                let c = |ch: usize| {
                    (v[(i * 3 + ch) * plane + p] * 127.5 + 128.0).clamp(0.0, 255.0) as u8
                };
                image::Rgb([c(0), c(1), c(2)])
            })
        })
        .collect())
}

/// Lay `rows` of tiles out on a grid with a 2-pixel gutter.
pub fn grid(rows: &[Vec<RgbImage>]) -> RgbImage {
    let (tw, th) = rows
        .iter()
        .flatten()
        .next()
        .map_or((1, 1), |t| (t.width(), t.height()));
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let g = 2;
    let mut out = RgbImage::from_pixel(
        cols * (tw + g) + g,
        rows.len() as u32 * (th + g) + g,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            image::imageops::replace(
                &mut out,
                t,
                (g + c as u32 * (tw + g)) as i64,
                (g + r as u32 * (th + g)) as i64,
            );
        }
    }
    out
}

/// The preview grid of `net` (the EMA weights) for this run.
pub fn preview(
    net: &EdmPrecond,
    cfg: &TrainConfig,
    relay: Option<&RelayInputs>,
    device: &Device,
) -> anyhow::Result<RgbImage> {
    let n = cfg.preview_images;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let mut noise = SeedNoise::new(&seeds);
    let label_dim = net.config().label_dim;
    match (&cfg.objective, &cfg.sampler, relay) {
        (Objective::Edm { resolution, .. }, SamplerDefaults::Edm(s), _) => {
            let scfg = EdmSamplerConfig {
                num_steps: cfg.preview_steps,
                ..s.clone()
            };
            let latents = noise.randn(&[3, *resolution, *resolution], DType::F64, device)?;
            let labels = match label_dim {
                0 => None,
                l => Some(balanced_class_labels(&seeds, l, DType::F64, device)?),
            };
            let out = edm_sampler(net, &latents, labels.as_ref(), &scfg, &mut noise, None)?;
            let t = tiles(&out.x)?;
            let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
            Ok(grid(
                &t.chunks(cols).map(<[RgbImage]>::to_vec).collect::<Vec<_>>(),
            ))
        }
        (Objective::Relay { from, to, .. }, SamplerDefaults::Blur(s), Some(inputs)) => {
            let scfg = BlurSamplerConfig {
                num_steps: cfg.preview_steps,
                ..s.clone()
            };
            let latents = upsample_nearest(&inputs.low.to_dtype(DType::F64)?, to / from)?;
            let labels = match (&inputs.classes, label_dim) {
                (Some(c), l) if l > 0 => Some(one_hot(c, l, DType::F64, device)?),
                _ => None,
            };
            let out = blur_sampler(net, &latents, labels.as_ref(), &scfg, &mut noise, None)?;
            Ok(grid(&[
                tiles(&latents)?,
                tiles(&out.x)?,
                tiles(&inputs.high)?,
            ]))
        }
        _ => anyhow::bail!("preview: the sampler defaults do not match the objective"),
    }
}
