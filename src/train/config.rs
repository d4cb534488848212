//! What one training run does, fully resolved: the objective (EDM base stage or relay
//! stage), the network, the optimiser and its schedules, the duration, and the logging and
//! snapshot cadence. Built by the `train` stage from its `with:`; stored in every snapshot
//! so a resume can check it continues the same run.
//!
//! Also the `config.json` written next to every `model.safetensors` ([`StageConfig`]):
//! architecture, diffusion settings, sampler defaults and cost, loadable without the pipeline.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::augment::AugmentPipe;
use crate::diffusion::blur_sampler::BlurSamplerConfig;
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::diffusion::loss::{BlurLoss, EdmLoss};
use crate::model::{checkpoint, EdmPrecond, UnetConfig};

/// The training objective and the resolution(s) it works at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Objective {
    /// Stage 1: EDM's loss on the `resolution`² image of each pair (RDM_NOTES §2).
    Edm { resolution: usize, loss: EdmLoss },
    /// A relay stage: RDM's blurring loss on the `to`² image of each pair (RDM_NOTES §4);
    /// `from` is the resolution it starts from at sampling time (`to / from = up_scale`).
    Relay {
        from: usize,
        to: usize,
        loss: BlurLoss,
    },
}

impl Objective {
    /// The side of the images the network trains on.
    pub fn train_resolution(&self) -> usize {
        match self {
            Self::Edm { resolution, .. } => *resolution,
            Self::Relay { to, .. } => *to,
        }
    }

    /// `"edm"` or `"relay"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Edm { .. } => "edm",
            Self::Relay { .. } => "relay",
        }
    }
}

/// Sampler defaults carried into `config.json` (and used for the preview grids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerDefaults {
    Edm(EdmSamplerConfig),
    Blur(BlurSamplerConfig),
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    /// Optimiser steps of `batch` images.
    Steps(u64),
    /// Thousands of images seen, as EDM counts (`cur_nimg >= total_kimg * 1000`).
    Kimg(f64),
}

/// Every setting of a run (see the `train` stage for each field's meaning and default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub objective: Objective,
    /// The network as trained: resolution, label_dim, dropout and label_dropout resolved.
    pub model: UnetConfig,
    /// Train on the `.cls` labels (the model then has `label_dim` > 0).
    pub cond: bool,
    /// Images per optimiser step, over all ranks.
    pub batch: usize,
    /// Images per forward/backward pass on one device (gradients accumulate over
    /// `batch / (micro_batch · world)` passes).
    pub micro_batch: usize,
    pub duration: Duration,
    pub seed: u64,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub lr_rampup_kimg: f64,
    pub ema_halflife_kimg: f64,
    pub ema_rampup_ratio: Option<f64>,
    /// Clip the global gradient norm to this value (off when `None`).
    pub grad_clip: Option<f64>,
    /// The loss is `sum · loss_scaling / loss_divisor` (RDM's reduction, §2).
    pub loss_scaling: f64,
    pub loss_divisor: f64,
    pub xflip: bool,
    /// Samples held by the shuffle buffer.
    pub shuffle_buffer: usize,
    /// One log row per this many kimg.
    pub tick_kimg: f64,
    /// A snapshot (EMA weights + training state + preview grid) per this many kimg.
    pub snapshot_kimg: f64,
    /// Snapshots kept (the oldest are deleted).
    pub keep_snapshots: usize,
    /// Images in each preview grid (0: none), and the sampler steps used for it.
    pub preview_images: usize,
    pub preview_steps: usize,
    pub sampler: SamplerDefaults,
    /// Run the network in bfloat16 (CUDA only); master weights, Adam and EMA stay float32.
    pub bf16: bool,
    /// Run the network in float16 (CUDA only), as EDM's `use_fp16`: weights cast per step,
    /// attention in float32, master weights, Adam and EMA float32; the reference's static
    /// `loss_scaling` and `nan_to_num` on the gradients, no dynamic scaler.
    #[serde(default)]
    pub fp16: bool,
    /// EDM's augmentation pipe (RDM: [`AugmentPipe::rdm`]); `None` trains on the images
    /// as they are. Its vector feeds the network's `map_augment` (`model.augment_dim`).
    #[serde(default)]
    pub augment: Option<AugmentPipe>,
    /// A snapshot folder of another run that a run without snapshots of its own continues
    /// from (`init_from:`): its weights, EMA, Adam state, counters and data position. Its
    /// settings must equal these but for [`TrainConfig::EXTENDABLE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl TrainConfig {
    /// The settings a continued run (`init_from`) may change: how long it trains and how
    /// often it logs, snapshots and previews, and the sampler defaults it stores.
    pub const EXTENDABLE: [&'static str; 8] = [
        "duration",
        "tick_kimg",
        "snapshot_kimg",
        "keep_snapshots",
        "preview_images",
        "preview_steps",
        "sampler",
        "init_from",
    ];

    /// The settings (top-level names) of `old` that this run differs in and may not change
    /// when it continues `old`'s training (empty: it may continue it).
    pub fn cannot_continue(&self, old: &TrainConfig) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(old).unwrap_or_default(),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec!["(settings)".into()];
        };
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !Self::EXTENDABLE.contains(&k.as_str()) && a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    }

    /// Total images the run sees, rounded up to whole steps.
    pub fn total_images(&self) -> u64 {
        let b = self.batch as u64;
        match self.duration {
            Duration::Steps(n) => n * b,
            Duration::Kimg(k) => ((k * 1000.0).ceil() as u64).div_ceil(b) * b,
        }
    }

    /// Total optimiser steps.
    pub fn total_steps(&self) -> u64 {
        self.total_images() / self.batch as u64
    }

    /// Check what the stage's parameter checks cannot see (model sizes and the like).
    pub fn validate(&self, world: usize) -> anyhow::Result<()> {
        self.model.validate()?;
        let res = self.objective.train_resolution();
        let m = self.model.size_multiple();
        if !res.is_multiple_of(m) {
            bail!(
                "the model has {} levels, so the training resolution must be a multiple of {m}; got {res}",
                self.model.levels()
            );
        }
        if self.batch == 0 || self.micro_batch == 0 {
            bail!("batch and micro_batch must be positive");
        }
        if !self.batch.is_multiple_of(self.micro_batch * world) {
            bail!(
                "batch {} is not a multiple of micro_batch {} × world size {world}",
                self.batch,
                self.micro_batch
            );
        }
        if self.cond && self.model.label_dim == 0 {
            bail!("cond: true needs a class count (label_dim) > 0");
        }
        if self.bf16 && self.fp16 {
            bail!("choose one of bf16 and fp16");
        }
        if self.bf16 && !cfg!(feature = "cuda") {
            bail!("bf16 needs a CUDA build (relay built with --features cuda)");
        }
        if let Some(pipe) = &self.augment {
            if self.model.augment_dim != pipe.label_dim() {
                bail!(
                    "the augmentation vector has {} columns but the model's augment_dim is {}",
                    pipe.label_dim(),
                    self.model.augment_dim
                );
            }
        }
        Ok(())
    }

    /// The dtype the network runs in during training.
    pub fn network_dtype(&self) -> DType {
        if self.bf16 {
            DType::BF16
        } else if self.fp16 {
            DType::F16
        } else {
            DType::F32
        }
    }

    /// The loss divisor the reference uses at this resolution: 32 for 64² images, 256
    /// otherwise (`RelayDiffusion: training/training_loop.py`, RDM_NOTES §2).
    pub fn reference_divisor(resolution: usize) -> f64 {
        if resolution == 64 {
            32.0
        } else {
            256.0
        }
    }
}

/// Training cost, in the run record and in `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub steps: u64,
    pub images_seen: u64,
    /// Wall-clock seconds of training, summed over every (resumed) run.
    pub wall_seconds: f64,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub device_count: usize,
    pub device_hours: f64,
    /// Forward FLOPs of one training image (model/info.rs counting).
    pub forward_flops_per_image: u64,
    /// 3 × forward FLOPs × images seen (forward + backward ≈ 3 forwards).
    pub training_flops: f64,
}

/// `config.json` of a trained stage: architecture, diffusion settings, sampler defaults,
/// training settings and cost. `model` is the [`UnetConfig`] the weights were built with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// `relay-stage/1`.
    pub format: String,
    pub model: UnetConfig,
    pub diffusion: Objective,
    pub sampler: SamplerDefaults,
    /// Training settings as run (the full [`TrainConfig`]).
    pub training: serde_json::Value,
    pub cost: Cost,
    /// Optimiser steps and images behind these weights.
    pub step: u64,
    pub kimg: f64,
}

/// The `format` value of [`StageConfig`].
pub const STAGE_FORMAT: &str = "relay-stage/1";

impl StageConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a trained stage's config.json", path.display()))?;
        if cfg.format != STAGE_FORMAT {
            bail!(
                "{}: unknown format `{}` (expected {STAGE_FORMAT})",
                path.display(),
                cfg.format
            );
        }
        cfg.model.validate()?;
        Ok(cfg)
    }
}

/// Load a trained stage folder (`config.json` as written by `train` + `model.safetensors`):
/// the EMA network and its settings.
pub fn load_stage_dir(
    dir: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<(EdmPrecond, StageConfig)> {
    let dir = dir.as_ref();
    let cfg = StageConfig::load(&dir.join(checkpoint::CONFIG_FILE))?;
    let vb = checkpoint::load_weights(
        dir.join(checkpoint::WEIGHTS_FILE),
        &cfg.model,
        dtype,
        device,
    )?;
    let net = EdmPrecond::new(vb, &cfg.model)?;
    Ok((net, cfg))
}
