//! The `train` stage's checks: everything that can be checked before the data is read,
//! turning [`TrainParams`] into the trainer's [`TrainConfig`] (objective, model, sampler
//! defaults). Every error names the key it is about.

use std::path::Path;

use anyhow::Context;

use super::params::{DiffusionKind, TrainParams};
use crate::diffusion::blur_sampler::{defaults_from_training, BlurSamplerConfig};
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::diffusion::loss::{BlurLoss, EdmLoss};
use crate::model::config::PRESETS;
use crate::model::UnetConfig;
use crate::stage::{parse_params, ParamError};
use crate::train::augment::AugmentPipe;
use crate::train::{Duration, Objective, SamplerDefaults, TrainConfig};

/// `v > 0` (false for NaN).
fn positive(v: f64) -> bool {
    v > 0.0
}

/// `v ≥ 0` (false for NaN).
fn non_negative(v: f64) -> bool {
    v >= 0.0
}

pub(super) fn err(key: &str, msg: impl Into<String>) -> ParamError {
    ParamError::new(key, msg)
}

/// Replace +∞ (S_max's default) by f64::MAX: JSON has no infinity, and σ ≤ f64::MAX holds
/// for every σ, so sampling is unchanged.
fn finite(v: f64) -> f64 {
    if v == f64::INFINITY {
        f64::MAX
    } else {
        v
    }
}

impl TrainParams {
    /// The objective and its resolution(s), checked.
    pub(super) fn objective(&self) -> Result<Objective, ParamError> {
        match self.diffusion {
            DiffusionKind::Edm => {
                for (k, set) in [
                    ("from", self.from.is_some()),
                    ("to", self.to.is_some()),
                    ("up_scale", self.up_scale.is_some()),
                    ("block_scale", self.block_scale.is_some()),
                    ("prob_length", self.prob_length.is_some()),
                    ("blur_sigma_max", self.blur_sigma_max.is_some()),
                ] {
                    if set {
                        return Err(err(k, format!("`{k}` is a relay-stage setting"))
                            .with_hint("use `diffusion: relay`, or remove it"));
                    }
                }
                let resolution = self.resolution.ok_or_else(|| {
                    err("resolution", "an edm stage needs `resolution`")
                        .with_hint("e.g. `resolution: 64`")
                })?;
                if resolution == 0 {
                    return Err(err("resolution", "`resolution` must be positive"));
                }
                Ok(Objective::Edm {
                    resolution,
                    loss: EdmLoss::default(),
                })
            }
            DiffusionKind::Relay => {
                if self.resolution.is_some() {
                    return Err(err(
                        "resolution",
                        "a relay stage takes `from` and `to`, not `resolution`",
                    )
                    .with_hint("e.g. `from: 64, to: 256`"));
                }
                let (Some(from), Some(to)) = (self.from, self.to) else {
                    let k = if self.from.is_none() { "from" } else { "to" };
                    return Err(err(k, "a relay stage needs `from` and `to`")
                        .with_hint("e.g. `from: 64, to: 256`"));
                };
                if from == 0 || to <= from || !to.is_multiple_of(from) {
                    return Err(err(
                        "to",
                        format!("`to` ({to}) must be a multiple of `from` ({from}) above it"),
                    )
                    .with_hint("relay stages upsample by an integer factor, e.g. 64 → 256"));
                }
                let factor = to / from;
                let up_scale = self.up_scale.unwrap_or(factor);
                if up_scale != factor {
                    return Err(err(
                        "up_scale",
                        format!("`up_scale` {up_scale} differs from to/from = {factor}"),
                    )
                    .with_hint(
                        "the DCT patch size is the upsampling factor (RDM_NOTES §3); leave it out",
                    ));
                }
                let d = BlurLoss::default();
                let prob_length = self.prob_length.unwrap_or(d.prob_length);
                if !(prob_length > 0.0 && prob_length <= 1.0) {
                    return Err(err("prob_length", "`prob_length` must be in (0, 1]"));
                }
                let block_scale = self.block_scale.unwrap_or(d.block_scale);
                let blur_sigma_max = self.blur_sigma_max.unwrap_or(d.blur_sigma_max);
                if block_scale < 0.0 || blur_sigma_max < 0.0 {
                    return Err(err(
                        "block_scale",
                        "`block_scale` and `blur_sigma_max` must be ≥ 0",
                    ));
                }
                Ok(Objective::Relay {
                    from,
                    to,
                    loss: BlurLoss {
                        up_scale,
                        prob_length,
                        block_scale,
                        blur_sigma_max,
                        ..d
                    },
                })
            }
        }
    }

    /// The sampler defaults: the stage's `sampler:` over the CLI defaults; a relay stage's
    /// blur schedule defaults to the one it trains (up_scale, σ_b,max, ℓ, block scale).
    fn sampler(&self, objective: &Objective) -> Result<SamplerDefaults, ParamError> {
        let given = match &self.sampler {
            None | Some(serde_yaml::Value::Null) => serde_yaml::Mapping::new(),
            Some(serde_yaml::Value::Mapping(m)) => m.clone(),
            Some(_) => {
                return Err(err(
                    "sampler",
                    "`sampler` must be a mapping of sampler settings",
                ))
            }
        };
        let prefix = |mut e: ParamError| {
            e.key = Some(match e.key {
                Some(k) => format!("sampler.{k}"),
                None => "sampler".into(),
            });
            e
        };
        match objective {
            Objective::Edm { .. } => {
                let mut s: EdmSamplerConfig =
                    parse_params(&serde_yaml::Value::Mapping(given)).map_err(prefix)?;
                s.s_max = finite(s.s_max);
                Ok(SamplerDefaults::Edm(s))
            }
            Objective::Relay { loss, .. } => {
                // The blur schedule it trains with, unless `sampler:` says otherwise.
                let mut m = given;
                let trained = serde_json::to_value(loss).expect("a loss serialises");
                for (k, v) in defaults_from_training(&trained) {
                    let v = serde_yaml::to_value(v).expect("JSON is YAML");
                    m.entry(serde_yaml::Value::String(k)).or_insert(v);
                }
                let mut s: BlurSamplerConfig =
                    parse_params(&serde_yaml::Value::Mapping(m)).map_err(prefix)?;
                if s.up_scale != loss.up_scale {
                    return Err(err(
                        "sampler.up_scale",
                        "the sampler's up_scale differs from the stage's",
                    ));
                }
                if let Some(c) = s.churn.as_mut() {
                    c.s_max = finite(c.s_max);
                }
                Ok(SamplerDefaults::Blur(s))
            }
        }
    }

    /// Everything checkable before the data is read. `model` is the resolved network config.
    pub(super) fn resolve(
        &self,
        model: UnetConfig,
        label_dim: usize,
    ) -> Result<TrainConfig, ParamError> {
        let objective = self.objective()?;
        let res = objective.train_resolution();
        let duration = match (self.steps, self.duration_kimg) {
            (Some(n), None) if n > 0 => Duration::Steps(n),
            (None, Some(k)) if k > 0.0 => Duration::Kimg(k),
            (Some(_), Some(_)) => {
                return Err(err("steps", "give `steps` or `duration_kimg`, not both"));
            }
            (None, None) => {
                return Err(err(
                    "steps",
                    "give the length as `steps` or `duration_kimg`",
                ))
            }
            _ => return Err(err("steps", "the length must be positive")),
        };
        let micro_batch = self.micro_batch.unwrap_or(self.batch);
        if self.batch == 0 || micro_batch == 0 || !self.batch.is_multiple_of(micro_batch) {
            return Err(err(
                "micro_batch",
                format!(
                    "`batch` ({}) must be a positive multiple of `micro_batch` ({micro_batch})",
                    self.batch
                ),
            ));
        }
        if !positive(self.lr)
            || !positive(self.eps)
            || self.betas.iter().any(|b| !(0.0..1.0).contains(b))
        {
            return Err(err("lr", "need lr > 0, eps > 0 and betas in [0, 1)"));
        }
        for (k, v) in [
            ("lr_rampup_kimg", self.lr_rampup_kimg),
            ("ema_halflife_kimg", self.ema_halflife_kimg),
            ("loss_scaling", self.loss_scaling),
        ] {
            if !non_negative(v) {
                return Err(err(k, format!("`{k}` must be ≥ 0")));
            }
        }
        for (k, v) in [
            ("tick_kimg", self.tick_kimg),
            ("snapshot_kimg", self.snapshot_kimg),
        ] {
            if !positive(v) {
                return Err(err(k, format!("`{k}` must be > 0")));
            }
        }
        if self.keep_snapshots == 0 {
            return Err(err(
                "keep_snapshots",
                "keep at least one snapshot (the resume point)",
            ));
        }
        if matches!(self.grad_clip, Some(c) if !positive(c)) {
            return Err(err(
                "grad_clip",
                "`grad_clip` must be > 0 (or null for no clipping)",
            ));
        }
        if matches!(self.loss_divisor, Some(d) if !positive(d)) {
            return Err(err("loss_divisor", "`loss_divisor` must be > 0"));
        }
        if self.preview_images > 0 && self.preview_steps == 0 {
            return Err(err("preview_steps", "`preview_steps` must be ≥ 1"));
        }
        if self.bf16 && self.fp16 {
            return Err(err("fp16", "set at most one of `bf16` and `fp16`"));
        }
        // fp16 is checked against the device when the stage runs: the paper templates set
        // it, and a pipeline that only validates or plans must not fail on a CPU build.
        if self.bf16 && !cfg!(feature = "cuda") {
            return Err(err("bf16", "bf16 training needs a CUDA build")
                .with_hint("build relay with `--features cuda`, or set `bf16: false`"));
        }
        // `augment: p` turns on EDM's pipe with RDM's multipliers; 0 (or null) is off, as
        // `train.py --augment=0`.
        let augment = match self.augment {
            None => None,
            Some(p) if (0.0..=1.0).contains(&p) => (p > 0.0).then(|| AugmentPipe::rdm(p)),
            Some(p) => {
                return Err(err(
                    "augment",
                    format!("`augment` is a probability in [0, 1], got {p}"),
                )
                .with_hint("RDM trains CelebA-HQ with 0.2 and ImageNet with 0.12"))
            }
        };
        let mut model = if model.img_resolution == res {
            model
        } else {
            model.with_resolution(res)
        };
        model.label_dim = label_dim;
        if let Some(pipe) = &augment {
            model.augment_dim = pipe.label_dim();
        }
        if let Some(p) = self.dropout {
            model.dropout = p;
        }
        if let Some(p) = self.label_dropout {
            model.label_dropout = p;
        }
        for (k, p) in [
            ("dropout", model.dropout),
            ("label_dropout", model.label_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(err(k, format!("`{k}` must be in [0, 1)")));
            }
        }
        let m = model.size_multiple();
        if !res.is_multiple_of(m) {
            return Err(err(
                if self.diffusion == DiffusionKind::Edm { "resolution" } else { "to" },
                format!("the model has {} levels, so the training side must be a multiple of {m}; got {res}", model.levels()),
            ));
        }
        model.validate().map_err(|e| err("model", e.to_string()))?;
        let sampler = self.sampler(&objective)?;
        Ok(TrainConfig {
            objective,
            model,
            cond: self.cond,
            batch: self.batch,
            micro_batch,
            duration,
            seed: self.seed,
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            lr_rampup_kimg: self.lr_rampup_kimg,
            ema_halflife_kimg: self.ema_halflife_kimg,
            ema_rampup_ratio: self.ema_rampup_ratio,
            grad_clip: self.grad_clip,
            loss_scaling: self.loss_scaling,
            loss_divisor: self
                .loss_divisor
                .unwrap_or_else(|| TrainConfig::reference_divisor(res)),
            xflip: self.xflip,
            shuffle_buffer: self.shuffle_buffer.max(1),
            tick_kimg: self.tick_kimg,
            snapshot_kimg: self.snapshot_kimg,
            keep_snapshots: self.keep_snapshots,
            preview_images: self.preview_images,
            preview_steps: self.preview_steps,
            sampler,
            bf16: self.bf16,
            fp16: self.fp16,
            augment,
            // Resolved to a snapshot folder when the stage runs (`run.rs`).
            init_from: None,
        })
    }
}

/// The model config named by `model` (a preset, or a file relative to `base`).
pub(super) fn load_model(name: &str, base: &Path) -> anyhow::Result<UnetConfig> {
    if PRESETS.contains(&name) {
        return Ok(UnetConfig::preset(name)?);
    }
    let p = Path::new(name);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    UnetConfig::from_name_or_path(&p.to_string_lossy()).with_context(|| format!("model `{name}`"))
}
