//! A chain of 1–3 stage models (64 → 256 → 1024) and the generation of one batch of seeds:
//! stage 1 samples from noise with the EDM sampler; every later stage starts from the
//! previous output nearest-upsampled by its scale and runs the blur sampler (RDM
//! `generate.py`). All randomness comes from each seed's own stream, continued across the
//! stages, so an image depends only on its seed. A chain of relay stages alone can start
//! from given low-resolution images instead ([`Start`]: RDM's super-resolution check,
//! App. C.3). Before anything runs, the chain checks its order, resolutions, label counts
//! and sampler settings, and reports guidance that cannot work ([`Chain::guidance_problems`]);
//! a non-finite image fails its batch naming the seeds.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model_folder::ModelFolder;
use crate::diffusion::blur_sampler::{blur_sampler, upsample_nearest, BlurSamplerConfig};
use crate::diffusion::edm_sampler::{edm_sampler, EdmSamplerConfig};
use crate::diffusion::noise::{balanced_class_labels, one_hot, NoiseSource, SeedNoise};
use crate::diffusion::Denoiser;
use crate::model::{checkpoint, EdmPrecond};

/// How class labels are chosen for a conditional model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelMode {
    /// `seed mod classes` (RDM `generate.py`): class-balanced, for class-balanced FID.
    #[default]
    Balanced,
    /// Drawn from the seed's own stream (EDM `generate.py`).
    Random,
    /// Every image gets this class.
    Fixed(usize),
}

impl LabelMode {
    /// The word recorded in manifests.
    pub fn word(&self) -> String {
        match self {
            Self::Balanced => "balanced".into(),
            Self::Random => "random".into(),
            Self::Fixed(k) => format!("fixed:{k}"),
        }
    }
}

impl<'de> Deserialize<'de> for LabelMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Fixed { fixed: usize },
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "balanced" => Ok(Self::Balanced),
            Raw::Word(w) if w == "random" => Ok(Self::Random),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "unknown label mode `{w}`: use balanced, random or {{fixed: K}}"
            ))),
            Raw::Fixed { fixed } => Ok(Self::Fixed(fixed)),
        }
    }
}

/// The sampler of one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "sampler", rename_all = "lowercase")]
pub enum StageSampler {
    Edm(EdmSamplerConfig),
    Blur(BlurSamplerConfig),
}

/// Where a stage's weights came from (recorded on every manifest row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Local folder (or `hf://` reference, once resolved).
    pub path: String,
    /// sha256 of `model.safetensors`.
    pub sha256: String,
}

/// One stage of the chain.
pub struct ChainStage {
    pub name: String,
    pub net: EdmPrecond,
    pub sampler: StageSampler,
    pub resolution: usize,
    pub checkpoint: CheckpointRef,
}

impl ChainStage {
    /// Load a stage model. A folder whose config does not say `edm` or `relay` is taken as a
    /// relay stage when `relay_by_default` (it follows another stage or given images).
    /// `overrides` are the user's sampler settings for this stage.
    pub fn load(
        name: &str,
        dir: &Path,
        relay_by_default: bool,
        overrides: &Value,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let card = ModelFolder::load(dir)?;
        let relay = match card.diffusion.as_deref() {
            Some("edm") => false,
            Some("relay") | Some("blur") => true,
            Some(other) => bail!(
                "{}: unknown diffusion `{other}` (edm or relay)",
                dir.display()
            ),
            None => relay_by_default,
        };
        // Defaults (serde fills every missing field), then what training wrote, then the
        // user's settings. A relay stage's blur schedule must be the one it was trained with.
        let settings = card.sampler_settings(relay, overrides);
        let sampler = if relay {
            StageSampler::Blur(
                serde_json::from_value(settings)
                    .with_context(|| format!("sampler settings of stage `{name}`"))?,
            )
        } else {
            StageSampler::Edm(
                serde_json::from_value(settings)
                    .with_context(|| format!("sampler settings of stage `{name}`"))?,
            )
        };
        let problem = match &sampler {
            StageSampler::Blur(c) => c.validate(),
            StageSampler::Edm(c) => c.validate(),
        };
        if let Err(e) = problem {
            bail!("sampler settings of stage `{name}`: {e}");
        }
        let weights = dir.join("model.safetensors");
        let sha256 = crate::util::sha256_file(&weights)
            .with_context(|| format!("reading {}", weights.display()))?;
        let vb = checkpoint::load_weights(&weights, &card.unet, DType::F32, device)?;
        let net = EdmPrecond::new(vb, &card.unet)?;
        Ok(Self {
            name: name.to_string(),
            net,
            sampler,
            resolution: card.resolution,
            checkpoint: CheckpointRef {
                path: dir.display().to_string(),
                sha256,
            },
        })
    }

    /// Whether this is a relay (blurring) stage.
    pub fn is_relay(&self) -> bool {
        matches!(self.sampler, StageSampler::Blur(_))
    }

    /// Classifier-free guidance λ of this stage's sampler.
    pub fn cfg_scale(&self) -> f64 {
        match &self.sampler {
            StageSampler::Blur(c) => c.cfg_scale,
            StageSampler::Edm(c) => c.cfg_scale,
        }
    }

    /// The upsampling factor from the previous stage (relay stages).
    pub fn up_scale(&self) -> usize {
        match &self.sampler {
            StageSampler::Blur(c) => c.up_scale,
            StageSampler::Edm(_) => 1,
        }
    }
}

/// A loaded chain.
pub struct Chain {
    pub stages: Vec<ChainStage>,
}

/// One generated batch.
pub struct Generated {
    pub images: Vec<RgbImage>,
    /// The class of each image (conditional models).
    pub classes: Vec<Option<usize>>,
    /// Denoiser evaluations per image, summed over the stages.
    pub nfe: usize,
}

/// Low-resolution images a chain of relay stages starts from (super-resolution), with the
/// noise added to them: x = image + noise·ε, ε drawn first from each seed's stream.
pub struct Start {
    /// `[B, C, h, w]` in [−1, 1].
    pub images: Tensor,
    pub noise: f64,
    /// Each image's class, when its source has one (used instead of the label mode).
    pub classes: Vec<Option<usize>>,
}

impl Chain {
    /// A chain from noise (an EDM base stage, then relay stages) or, `from_images`, of relay
    /// stages only. Checks the order, the resolutions and that every stage has the same
    /// label count.
    pub fn new(stages: Vec<ChainStage>, from_images: bool) -> anyhow::Result<Self> {
        if stages.is_empty() {
            bail!("no models: give `models:` or list the train stages in `needs:`");
        }
        for (pos, stage) in stages.iter().enumerate() {
            match (pos, stage.is_relay(), from_images) {
                (0, true, false) => bail!(
                    "model `{}` is a relay stage; it needs a base stage before it, or low-resolution \
                     images to start from (`init:`)",
                    stage.name
                ),
                (_, false, true) => bail!(
                    "model `{}` is an EDM base stage, but a chain started from images (`init:`) \
                     runs relay stages only; leave it out",
                    stage.name
                ),
                (p, false, false) if p > 0 => bail!(
                    "model `{}` is an EDM base stage but stands at position {} of the chain; list the \
                     base stage first",
                    stage.name,
                    p + 1
                ),
                _ => {}
            }
        }
        let dims: Vec<(String, usize)> = stages
            .iter()
            .map(|s| (s.name.clone(), s.net.label_dim()))
            .collect();
        if dims.iter().any(|d| d.1 != dims[0].1) {
            let list: Vec<String> = dims.iter().map(|(n, d)| format!("`{n}` {d}")).collect();
            bail!(
                "the stages of a chain share the class labels, but their label counts differ ({}); \
                 train them on the same classes",
                list.join(", ")
            );
        }
        for pair in stages.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.resolution * b.up_scale() != b.resolution {
                bail!(
                    "stage `{}` makes {}px images but `{}` expects {}px / up_scale {} = {}px",
                    a.name,
                    a.resolution,
                    b.name,
                    b.resolution,
                    b.up_scale(),
                    b.resolution / b.up_scale().max(1)
                );
            }
        }
        Ok(Self { stages })
    }

    /// Classes: 0 for unconditional chains.
    pub fn label_dim(&self) -> usize {
        self.stages[0].net.label_dim()
    }

    /// Guidance the stages cannot give as asked: CFG > 1 on an unconditional stage (a no-op)
    /// or on one trained with `label_dropout` 0, whose unconditional branch (an all-zero
    /// label) never saw training (RDM_NOTES §11.5: the published ImageNet stage 2 is sampled
    /// so). One message per stage.
    pub fn guidance_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.stages {
            let (lambda, cfg) = (s.cfg_scale(), s.net.config());
            if lambda <= 1.0 {
                continue;
            }
            if cfg.label_dim == 0 {
                out.push(format!(
                    "stage `{}` samples with cfg_scale {lambda}, but its model is unconditional: \
                     guidance does nothing",
                    s.name
                ));
            } else if cfg.label_dropout == 0.0 {
                out.push(format!(
                    "stage `{}` samples with cfg_scale {lambda}, but its model was trained with \
                     label_dropout 0: the unconditional branch of the guidance was never trained \
                     (as in the published code, RDM_NOTES §11.5); train with label_dropout > 0 or \
                     set cfg_scale 1",
                    s.name
                ));
            }
        }
        out
    }

    pub fn resolution(&self) -> usize {
        self.stages.last().map(|s| s.resolution).unwrap_or(0)
    }

    /// Generate the images of `seeds` (one batch), from noise or from `start`'s images.
    pub fn generate(
        &self,
        seeds: &[u64],
        mode: LabelMode,
        start: Option<&Start>,
        device: &Device,
    ) -> anyhow::Result<Generated> {
        let mut noise = SeedNoise::new(seeds);
        let first = &self.stages[0];
        let res = first.resolution;
        // From noise: the latents are each seed's first draw. From images: the added noise.
        let (latents, mut x) = match start {
            None => {
                let shape = [first.net.config().in_channels, res, res];
                (Some(noise.randn(&shape, DType::F64, device)?), None)
            }
            Some(s) => {
                let low = s.images.to_dtype(DType::F64)?.to_device(device)?;
                let low = if s.noise > 0.0 {
                    let eps = noise.randn(&low.dims()[1..], DType::F64, device)?;
                    (low + (eps * s.noise)?)?
                } else {
                    low
                };
                (None, Some(low))
            }
        };
        let label_dim = self.label_dim();
        let (labels, classes) = if label_dim == 0 {
            (None, vec![None; seeds.len()])
        } else {
            let classes: Vec<usize> = match mode {
                LabelMode::Balanced => seeds
                    .iter()
                    .map(|&s| (s % label_dim as u64) as usize)
                    .collect(),
                LabelMode::Fixed(k) if k < label_dim => vec![k; seeds.len()],
                LabelMode::Fixed(k) => {
                    bail!("class {k} does not exist: the model has {label_dim} classes")
                }
                LabelMode::Random => {
                    let onehot = noise.random_class_labels(label_dim, DType::F64, device)?;
                    onehot
                        .argmax(1)?
                        .to_vec1::<u32>()?
                        .into_iter()
                        .map(|c| c as usize)
                        .collect()
                }
            };
            // Given images with a class keep it (checked against the label count).
            let given: Vec<Option<usize>> =
                start.map_or(vec![None; seeds.len()], |s| s.classes.clone());
            if let Some(c) = given.iter().flatten().find(|&&c| c >= label_dim) {
                bail!("a start image has class {c}, but the model has {label_dim} classes")
            }
            let classes: Vec<usize> = classes
                .iter()
                .zip(&given)
                .map(|(&c, g)| g.unwrap_or(c))
                .collect();
            let t = match mode {
                LabelMode::Balanced if given.iter().all(Option::is_none) => {
                    balanced_class_labels(seeds, label_dim, DType::F64, device)?
                }
                _ => one_hot(&classes, label_dim, DType::F64, device)?,
            };
            (Some(t), classes.into_iter().map(Some).collect())
        };
        let mut nfe = 0;
        for stage in &self.stages {
            let out = match (&stage.sampler, &x, &latents) {
                (StageSampler::Edm(cfg), None, Some(latents)) => {
                    edm_sampler(&stage.net, latents, labels.as_ref(), cfg, &mut noise, None)?
                }
                (StageSampler::Blur(cfg), Some(prev), _) => {
                    let up = upsample_nearest(prev, cfg.up_scale)?;
                    blur_sampler(&stage.net, &up, labels.as_ref(), cfg, &mut noise, None)?
                }
                _ => bail!("stage `{}` is in the wrong place of the chain", stage.name),
            };
            nfe += out.nfe;
            check_finite(&out.x, seeds, &stage.name)?;
            x = Some(out.x);
        }
        let x = x.expect("at least one stage");
        Ok(Generated {
            images: to_images(&x)?,
            classes,
            nfe,
        })
    }
}

/// Fails naming the seeds whose images hold NaN or ±∞ (instead of writing black images).
fn check_finite(x: &Tensor, seeds: &[u64], stage: &str) -> anyhow::Result<()> {
    let sums = x
        .flatten_from(1)?
        .sum(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let bad: Vec<u64> = sums
        .iter()
        .zip(seeds)
        .filter(|(s, _)| !s.is_finite())
        .map(|(_, &seed)| seed)
        .collect();
    if !bad.is_empty() {
        bail!(
            "stage `{stage}` produced non-finite values (NaN or ±∞) for seed(s) {bad:?}; nothing of \
             this shard was written. Check the model's weights and the sampler settings"
        );
    }
    Ok(())
}

/// `[B, 3, H, W]` in [-1, 1] → RGB8 images, as the reference saves them:
/// `(x·127.5 + 128).clip(0, 255)` truncated to uint8.
pub fn to_images(x: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    let (b, c, h, w) = x.dims4()?;
    if c != 3 {
        bail!("expected 3 colour channels, got {c}");
    }
    let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let mut img = RgbImage::new(w as u32, h as u32);
        for (y, row) in img.rows_mut().enumerate() {
            for (xx, px) in row.enumerate() {
                for ch in 0..3 {
                    let val = v[((i * 3 + ch) * h + y) * w + xx];
                    px.0[ch] = (val * 127.5 + 128.0).clamp(0.0, 255.0) as u8;
                }
            }
        }
        out.push(img);
    }
    Ok(out)
}
