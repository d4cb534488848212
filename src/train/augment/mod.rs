//! Non-leaking data augmentation as EDM trains with it (Karras et al. 2022, App. F.2,
//! built on ADA: Karras et al. 2020, "Training Generative Adversarial Networks with Limited
//! Data"; edm `training/augment.py AugmentPipe`). RDM trains every stage with it
//! (RDM_NOTES §7): p = 0.2 for CelebA-HQ, 0.12 for ImageNet, with the multipliers of
//! [`AugmentPipe::rdm`]. The network sees what was done through the augmentation vector
//! (`augment_dim` = 9 at RDM's settings, fed to `map_augment`), so it can learn the clean
//! distribution and be sampled with a zero vector.
//!
//! 1. Pixel blitting: x-flip, y-flip, quarter turns, integer translation.
//! 2. Geometric parameters: isotropic scale, fractional rotation, anisotropic scale,
//!    fractional translation, composed into one inverse transform per image (float32
//!    3×3 matrices, [`matrix`]). When any of them is enabled the images go through the
//!    wavelet resampling ([`geometric::resample`]) even if no image drew a transform:
//!    the reference does so (at p = 0 it changes an image by ~2.6e-6).
//! 3. Colour: brightness, contrast, luma flip, hue rotation, saturation, one 4×4 matrix.
//!
//! Every random draw comes from an [`AugmentRng`] in the reference's call order; the
//! trainer's [`SeedAugment`] keys one stream per (seed, step, image), so a resumed run
//! augments exactly as an uninterrupted one. Parameter maths runs on the host in float32
//! as torch does; images stay on their device.

pub mod colour;
pub mod geometric;
pub mod matrix;

use candle_core::{bail, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::rng::Stream;
use matrix::{mul3, rotate2d, scale2d, translate2d, I3};

/// Where the pipe's random numbers come from. Each call returns `per` values for each of
/// the batch's images, image-major (`v[b·per + k]`).
pub trait AugmentRng {
    /// Integers in `0..high` (`torch.randint`).
    fn randint(&mut self, high: u32, per: usize) -> Result<Vec<i64>>;
    /// U[0, 1) in float32 (`torch.rand`).
    fn rand(&mut self, per: usize) -> Result<Vec<f32>>;
    /// N(0, 1) in float32 (`torch.randn`).
    fn randn(&mut self, per: usize) -> Result<Vec<f32>>;
}

/// One Philox stream per image ([`Stream`]), keyed by the caller.
#[derive(Debug, Clone)]
pub struct SeedAugment {
    streams: Vec<Stream>,
}

impl SeedAugment {
    pub fn new(seeds: &[u64]) -> Self {
        Self {
            streams: seeds.iter().map(|&s| Stream::new(s)).collect(),
        }
    }
}

impl AugmentRng for SeedAugment {
    fn randint(&mut self, high: u32, per: usize) -> Result<Vec<i64>> {
        Ok(self
            .streams
            .iter_mut()
            .flat_map(|s| {
                (0..per)
                    .map(|_| s.below(u64::from(high)) as i64)
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    fn rand(&mut self, per: usize) -> Result<Vec<f32>> {
        // Rounding to float32 can reach 1.0; keep the draws in [0, 1).
        let below_one = |u: f64| (u as f32).min(1.0 - f32::EPSILON / 2.0);
        Ok(self
            .streams
            .iter_mut()
            .flat_map(|s| s.uniform(per).into_iter().map(below_one))
            .collect())
    }

    fn randn(&mut self, per: usize) -> Result<Vec<f32>> {
        Ok(self
            .streams
            .iter_mut()
            .flat_map(|s| s.normal(per).into_iter().map(|v| v as f32))
            .collect())
    }
}

/// EDM's `AugmentPipe`: each transform's probability is `p ×` its multiplier; the
/// multipliers default to 0 (off), the ranges to EDM's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentPipe {
    /// Overall multiplier for the augmentation probability.
    pub p: f64,
    pub xflip: f64,
    pub yflip: f64,
    pub rotate_int: f64,
    pub translate_int: f64,
    /// Range of integer translation, relative to the image size.
    pub translate_int_max: f64,
    pub scale: f64,
    pub rotate_frac: f64,
    pub aniso: f64,
    pub translate_frac: f64,
    /// Log2 standard deviation of isotropic scaling.
    pub scale_std: f64,
    /// Range of fractional rotation, 1 = full circle.
    pub rotate_frac_max: f64,
    /// Log2 standard deviation of anisotropic scaling.
    pub aniso_std: f64,
    /// Probability of anisotropic scaling along a rotated frame.
    pub aniso_rotate_prob: f64,
    /// Standard deviation of fractional translation, relative to the image size.
    pub translate_frac_std: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub lumaflip: f64,
    pub hue: f64,
    pub saturation: f64,
    pub brightness_std: f64,
    /// Log2 standard deviation of contrast.
    pub contrast_std: f64,
    /// Range of hue rotation, 1 = full circle.
    pub hue_max: f64,
    /// Log2 standard deviation of saturation.
    pub saturation_std: f64,
}

impl Default for AugmentPipe {
    fn default() -> Self {
        Self {
            p: 1.0,
            xflip: 0.0,
            yflip: 0.0,
            rotate_int: 0.0,
            translate_int: 0.0,
            translate_int_max: 0.125,
            scale: 0.0,
            rotate_frac: 0.0,
            aniso: 0.0,
            translate_frac: 0.0,
            scale_std: 0.2,
            rotate_frac_max: 1.0,
            aniso_std: 0.2,
            aniso_rotate_prob: 0.5,
            translate_frac_std: 0.125,
            brightness: 0.0,
            contrast: 0.0,
            lumaflip: 0.0,
            hue: 0.0,
            saturation: 0.0,
            brightness_std: 0.2,
            contrast_std: 0.5,
            hue_max: 1.0,
            saturation_std: 1.0,
        }
    }
}

/// The augmented images and the augmentation vector `[N, label_dim]` (float32).
#[derive(Debug, Clone)]
pub struct Augmented {
    pub images: Tensor,
    pub labels: Tensor,
}

/// Appends one column (a value per image) to the augmentation vectors.
fn push_column(labels: &mut [Vec<f32>], per: &[f32]) {
    for (l, v) in labels.iter_mut().zip(per) {
        l.push(*v);
    }
}

/// `u < mult·p`, compared in float32 as torch compares a float32 tensor with a Python float.
fn chosen(u: &[f32], mult: f64, p: f64) -> Vec<bool> {
    let t = (mult * p) as f32;
    u.iter().map(|&u| u < t).collect()
}

/// `where(keep, w, 0)`.
fn keep<T: Copy + Default>(w: &[T], keep: &[bool], per: usize) -> Vec<T> {
    w.iter()
        .enumerate()
        .map(|(i, &w)| if keep[i / per] { w } else { T::default() })
        .collect()
}

impl AugmentPipe {
    /// RDM's settings (`RelayDiffusion: train.py --augment=p`): xflip 1e8 (so half the
    /// images are flipped whenever p > 0), yflip, scale, rotate_frac, aniso and
    /// translate_frac at 1; 9 label columns.
    pub fn rdm(p: f64) -> Self {
        Self {
            p,
            xflip: 1e8,
            yflip: 1.0,
            scale: 1.0,
            rotate_frac: 1.0,
            aniso: 1.0,
            translate_frac: 1.0,
            ..Self::default()
        }
    }

    /// Columns of the augmentation vector: one per enabled transform, two for quarter
    /// turns, integer translation, rotation, anisotropy, fractional translation and hue.
    pub fn label_dim(&self) -> usize {
        [
            (self.xflip, 1),
            (self.yflip, 1),
            (self.rotate_int, 2),
            (self.translate_int, 2),
            (self.scale, 1),
            (self.rotate_frac, 2),
            (self.aniso, 2),
            (self.translate_frac, 2),
            (self.brightness, 1),
            (self.contrast, 1),
            (self.lumaflip, 1),
            (self.hue, 2),
            (self.saturation, 1),
        ]
        .iter()
        .filter(|(m, _)| *m > 0.0)
        .map(|(_, k)| k)
        .sum()
    }

    /// Checks the settings a user can give.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(format!(
                "augment probability p = {} is not in [0, 1]",
                self.p
            ));
        }
        Ok(())
    }

    /// Augments `images` `[N, C, H, W]` (C = 3, or 1 for the colour transforms), drawing
    /// from `rng` in the reference's order.
    pub fn apply(&self, images: &Tensor, rng: &mut dyn AugmentRng) -> Result<Augmented> {
        let (n, _, h, w) = images.dims4()?;
        let p = self.p;
        let mut labels: Vec<Vec<f32>> = vec![Vec::new(); n];
        let mut x = images.clone();

        // 1. Pixel blitting.
        for (mult, dim) in [(self.xflip, 3), (self.yflip, 2)] {
            if mult > 0.0 {
                let r = rng.randint(2, 1)?;
                let wv = keep(&r, &chosen(&rng.rand(1)?, mult, p), 1);
                let flip: Vec<bool> = wv.iter().map(|&v| v == 1).collect();
                x = geometric::select(&flip, &x.flip(&[dim])?, &x)?;
                push_column(
                    &mut labels,
                    &wv.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                );
            }
        }
        if self.rotate_int > 0.0 {
            if h != w {
                bail!("quarter-turn augmentation needs square images, got {h}×{w}")
            }
            let r = rng.randint(4, 1)?;
            let wv = keep(&r, &chosen(&rng.rand(1)?, self.rotate_int, p), 1);
            let is = |set: &[i64]| -> Vec<bool> { wv.iter().map(|v| set.contains(v)).collect() };
            x = geometric::select(&is(&[1, 2]), &x.flip(&[3])?, &x)?;
            x = geometric::select(&is(&[2, 3]), &x.flip(&[2])?, &x)?;
            x = geometric::select(&is(&[1, 3]), &x.transpose(2, 3)?.contiguous()?, &x)?;
            let f = |set: &[i64]| -> Vec<f32> {
                is(set).iter().map(|&b| f32::from(u8::from(b))).collect()
            };
            push_column(&mut labels, &f(&[1, 2]));
            push_column(&mut labels, &f(&[2, 3]));
        }
        if self.translate_int > 0.0 {
            let r: Vec<f32> = rng.rand(2)?.iter().map(|u| u * 2.0 - 1.0).collect();
            let wv = keep(&r, &chosen(&rng.rand(1)?, self.translate_int, p), 2);
            let (sx, sy) = (
                (w as f64 * self.translate_int_max) as f32,
                (h as f64 * self.translate_int_max) as f32,
            );
            let tx: Vec<i64> = (0..n)
                .map(|b| (wv[2 * b] * sx).round_ties_even() as i64)
                .collect();
            let ty: Vec<i64> = (0..n)
                .map(|b| (wv[2 * b + 1] * sy).round_ties_even() as i64)
                .collect();
            x = geometric::translate_int(&x, &tx, &ty)?;
            push_column(
                &mut labels,
                &tx.iter().map(|&t| t as f32 / sx).collect::<Vec<_>>(),
            );
            push_column(
                &mut labels,
                &ty.iter().map(|&t| t as f32 / sy).collect::<Vec<_>>(),
            );
        }

        // 2. Geometric transformations: one inverse matrix per image.
        let mut g = vec![I3; n];
        let geometric = [
            self.scale,
            self.rotate_frac,
            self.aniso,
            self.translate_frac,
        ]
        .iter()
        .any(|&m| m > 0.0);
        if self.scale > 0.0 {
            let r = rng.randn(1)?;
            let wv = keep(&r, &chosen(&rng.rand(1)?, self.scale, p), 1);
            for (gb, &wb) in g.iter_mut().zip(&wv) {
                let s = (wb * self.scale_std as f32).exp2();
                *gb = mul3(gb, &scale2d(1.0 / s, 1.0 / s));
            }
            push_column(&mut labels, &wv);
        }
        if self.rotate_frac > 0.0 {
            let range = (std::f64::consts::PI * self.rotate_frac_max) as f32;
            let r: Vec<f32> = rng
                .rand(1)?
                .iter()
                .map(|u| (u * 2.0 - 1.0) * range)
                .collect();
            let wv = keep(&r, &chosen(&rng.rand(1)?, self.rotate_frac, p), 1);
            for (gb, &wb) in g.iter_mut().zip(&wv) {
                *gb = mul3(gb, &rotate2d(wb)); // rotate2d_inv(−w)
            }
            push_column(
                &mut labels,
                &wv.iter().map(|w| w.cos() - 1.0).collect::<Vec<_>>(),
            );
            push_column(&mut labels, &wv.iter().map(|w| w.sin()).collect::<Vec<_>>());
        }
        if self.aniso > 0.0 {
            let wr = rng.randn(1)?;
            let pi = std::f64::consts::PI as f32;
            let rr: Vec<f32> = rng.rand(1)?.iter().map(|u| (u * 2.0 - 1.0) * pi).collect();
            let wv = keep(&wr, &chosen(&rng.rand(1)?, self.aniso, p), 1);
            let rv = keep(&rr, &chosen(&rng.rand(1)?, self.aniso_rotate_prob, 1.0), 1);
            for ((gb, &wb), &rb) in g.iter_mut().zip(&wv).zip(&rv) {
                let s = (wb * self.aniso_std as f32).exp2();
                let a = mul3(gb, &rotate2d(-rb)); // rotate2d_inv(r)
                let a = mul3(&a, &scale2d(1.0 / s, 1.0 / (1.0 / s)));
                *gb = mul3(&a, &rotate2d(rb)); // rotate2d_inv(−r)
            }
            let (wc, ws): (Vec<f32>, Vec<f32>) = wv
                .iter()
                .zip(&rv)
                .map(|(w, r)| (w * r.cos(), w * r.sin()))
                .unzip();
            push_column(&mut labels, &wc);
            push_column(&mut labels, &ws);
        }
        if self.translate_frac > 0.0 {
            let r = rng.randn(2)?;
            let wv = keep(&r, &chosen(&rng.rand(1)?, self.translate_frac, p), 2);
            let (sx, sy) = (
                (w as f64 * self.translate_frac_std) as f32,
                (h as f64 * self.translate_frac_std) as f32,
            );
            for (b, gb) in g.iter_mut().enumerate() {
                let t = translate2d(-(wv[2 * b] * sx), -(wv[2 * b + 1] * sy));
                *gb = mul3(gb, &t);
            }
            push_column(&mut labels, &(0..n).map(|b| wv[2 * b]).collect::<Vec<_>>());
            push_column(
                &mut labels,
                &(0..n).map(|b| wv[2 * b + 1]).collect::<Vec<_>>(),
            );
        }
        if geometric {
            x = geometric::resample(&x, &g)?;
        }

        // 3. Colour transformations: one 4×4 matrix per image.
        let (m, colour) = colour::colour_matrices(self, n, &mut labels, rng)?;
        if colour {
            x = colour::apply_colour(&x, &m)?;
        }

        let dim = labels.first().map_or(0, Vec::len);
        let flat: Vec<f32> = labels.into_iter().flatten().collect();
        let labels = Tensor::from_vec(flat, (n, dim), &Device::Cpu)?.to_device(images.device())?;
        Ok(Augmented { images: x, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// RDM's settings give the 9 columns the network's `augment_dim` expects; at p = 0 no
    /// transform is drawn, so the vector is all zeros and the images change only by the
    /// wavelet round trip (the reference's p = 0 quirk).
    #[test]
    fn rdm_settings() -> Result<()> {
        assert_eq!(AugmentPipe::rdm(0.12).label_dim(), 9);
        assert_eq!(AugmentPipe::default().label_dim(), 0);
        let x = Tensor::randn(0f32, 0.5, (3, 3, 16, 16), &Device::Cpu)?;
        let out = AugmentPipe::rdm(0.0).apply(&x, &mut SeedAugment::new(&[1, 2, 3]))?;
        assert_eq!(out.labels.dims(), &[3, 9]);
        assert_eq!(out.labels.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        let moved = (out.images - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 0.0 && moved < 1e-4, "p = 0 moved pixels by {moved}");
        Ok(())
    }

    /// The same seeds give the same augmentation; p = 1 transforms every image.
    #[test]
    fn seeded_and_effective() -> Result<()> {
        let x = Tensor::randn(0f32, 0.5, (2, 3, 8, 8), &Device::Cpu)?;
        let pipe = AugmentPipe::rdm(1.0);
        let a = pipe.apply(&x, &mut SeedAugment::new(&[5, 6]))?;
        let b = pipe.apply(&x, &mut SeedAugment::new(&[5, 6]))?;
        let diff = (&a.images - &b.images)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let scale = a
            .labels
            .narrow(1, 2, 1)?
            .abs()?
            .min_all()?
            .to_scalar::<f32>()?;
        assert!(scale > 0.0, "p = 1 left an image unscaled");
        assert_eq!(a.images.dtype(), DType::F32);
        Ok(())
    }
}
