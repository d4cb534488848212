//! A chain of 1–3 stage models (64 → 256 → 1024) and the generation of one batch of seeds:
//! stage 1 samples from noise with the EDM sampler; every later stage starts from the
//! previous output nearest-upsampled by its scale and runs the blur sampler (RDM
//! `generate.py`). All randomness comes from each seed's own stream, continued across the
//! stages, so an image depends only on its seed.

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
    /// Load a stage model; `position` 0 samples from noise (EDM), later ones are relay stages.
    /// `overrides` are the user's sampler settings for this stage.
    pub fn load(
        name: &str,
        dir: &Path,
        position: usize,
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
            None => position > 0,
        };
        if relay && position == 0 {
            bail!(
                "model `{name}` ({}) is a relay stage; it needs a base stage before it (or super-resolution input)",
                dir.display()
            );
        }
        if !relay && position > 0 {
            bail!("model `{name}` ({}) is an EDM base stage but stands at position {} of the chain; list the base stage first", dir.display(), position + 1);
        }
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

impl Chain {
    pub fn new(stages: Vec<ChainStage>) -> anyhow::Result<Self> {
        if stages.is_empty() {
            bail!("no models: give `models:` or list the train stages in `needs:`");
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

    pub fn resolution(&self) -> usize {
        self.stages.last().map(|s| s.resolution).unwrap_or(0)
    }

    /// Generate the images of `seeds` (one batch).
    pub fn generate(
        &self,
        seeds: &[u64],
        mode: LabelMode,
        device: &Device,
    ) -> anyhow::Result<Generated> {
        let mut noise = SeedNoise::new(seeds);
        let first = &self.stages[0];
        let res = first.resolution;
        let latents = noise.randn(
            &[first.net.config().in_channels, res, res],
            DType::F64,
            device,
        )?;
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
            let t = match mode {
                LabelMode::Balanced => balanced_class_labels(seeds, label_dim, DType::F64, device)?,
                _ => one_hot(&classes, label_dim, DType::F64, device)?,
            };
            (Some(t), classes.into_iter().map(Some).collect())
        };
        let mut nfe = 0;
        let mut x: Option<Tensor> = None;
        for stage in &self.stages {
            let out = match (&stage.sampler, &x) {
                (StageSampler::Edm(cfg), None) => {
                    edm_sampler(&stage.net, &latents, labels.as_ref(), cfg, &mut noise, None)?
                }
                (StageSampler::Blur(cfg), Some(prev)) => {
                    let up = upsample_nearest(prev, cfg.up_scale)?;
                    blur_sampler(&stage.net, &up, labels.as_ref(), cfg, &mut noise, None)?
                }
                _ => bail!("stage `{}` is in the wrong place of the chain", stage.name),
            };
            nfe += out.nfe;
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
