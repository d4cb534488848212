//! `train`: train one stage of a relay cascade on the pairs of a `downsample` stage — the
//! EDM base stage (`diffusion: edm`) or a relay (blurring) stage (`diffusion: relay`).
//! Resumable: an interrupted run continues from its last snapshot (see [`crate::train`]).
//!
//! ```yaml
//! base:
//!   uses: train                      # or a template: stages/edm-adm-64.yaml
//!   needs: [pairs]
//!   with: { diffusion: edm, resolution: 64, model: adm-64, batch: 512, duration_kimg: 200000 }
//! relay:
//!   uses: train
//!   needs: [pairs]
//!   with: { diffusion: relay, from: 64, to: 256, model: adm-256, batch: 512, steps: 100000 }
//! ```
//!
//! Parameters (defaults are EDM/RDM `train.py`'s, RDM_NOTES §2, §4, §7):
//!
//! | key | meaning | default |
//! |-----|---------|---------|
//! | `diffusion` | `edm` (base stage) or `relay` (blurring stage) | required |
//! | `resolution` | edm: side of the pair image trained on (`KEY.<resolution>.png`) | required for edm |
//! | `from`, `to` | relay: low and high side; trains on `KEY.<to>.png`; `to % from == 0` | required for relay |
//! | `model` | preset (`tiny`, `adm-64`, `adm-256`) or a `config.json` path (relative to the pipeline) | required |
//! | `cond` | train on the `.cls` labels | false |
//! | `classes` | label count when `cond` (else the model's `label_dim`, else max label + 1 in the data) | – |
//! | `batch` | images per optimiser step (all devices) | required |
//! | `micro_batch` | images per forward/backward on one device; gradients accumulate | `batch` |
//! | `steps` / `duration_kimg` | length in steps or in thousands of images (exactly one) | required |
//! | `seed` | weights, noise, shuffle, flips, label dropout | 0 |
//! | `lr`, `betas`, `eps` | Adam | 1e-4, [0.9, 0.999], 1e-8 |
//! | `lr_rampup_kimg` | linear learning-rate warm-up | 10000 |
//! | `ema_halflife_kimg`, `ema_rampup_ratio` | EMA half-life and its ramp-up (null: off) | 500, 0.05 |
//! | `dropout`, `label_dropout` | override the model config's | model's |
//! | `grad_clip` | clip the global gradient norm (null: off) | null |
//! | `loss_scaling`, `loss_divisor` | loss = Σ · scaling / divisor; divisor null = 32 at 64 px, else 256 (RDM) | 1, null |
//! | `xflip` | random horizontal flips | false |
//! | `shuffle_buffer` | samples in the shuffle buffer | 1000 |
//! | `tick_kimg` | one `train_log.parquet` row per tick | 50 |
//! | `snapshot_kimg`, `keep_snapshots` | snapshot cadence, snapshots kept | 500, 3 |
//! | `preview_images`, `preview_steps` | images and sampler steps of each snapshot's grid (0: none) | 16, 18 |
//! | `up_scale`, `block_scale`, `prob_length`, `blur_sigma_max` | relay: BlurLoss settings | to/from, 0.15, 0.93, 3.0 |
//! | `sampler` | sampler defaults stored in `config.json` (EDM or blur sampler fields) | CLI defaults |
//! | `bf16` | bfloat16 network (CUDA builds only) | false |
//! | `fp16` | float16 network as EDM's `--fp16` (CUDA devices only, checked when the stage runs; static `loss_scaling`, no dynamic scaler, as the reference) | false |
//! | `augment` | EDM's non-leaky augmentation pipe at probability p with RDM's multipliers; its 9-dim vector conditions the network (`augment_dim` 9); 0 or null: off | null |
//!
//! Output: `model.safetensors` (EMA), `config.json`, `train_log.parquet`, `loss.png`,
//! `samples.png` and `snapshots/`. The run record gets the cost: images seen, wall seconds,
//! device and count, device-hours and estimated training FLOPs.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::{
    parse_params, Cancelled, Outcome, ParamError, Params, PlanContext, Resources, StageContext,
    StageKind,
};
use crate::device::DeviceSpec;
use crate::diffusion::blur_sampler::BlurSamplerConfig;
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::diffusion::loss::{BlurLoss, EdmLoss};
use crate::model::config::PRESETS;
use crate::model::UnetConfig;
use crate::train::augment::AugmentPipe;
use crate::train::{
    self, Duration, Objective, SamplerDefaults, TrainCancelled, TrainConfig, World,
};

pub struct Train;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DiffusionKind {
    Edm,
    Relay,
}

fn d_lr() -> f64 {
    1e-4
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_rampup() -> f64 {
    10_000.0
}
fn d_ema() -> f64 {
    500.0
}
fn d_ema_ratio() -> Option<f64> {
    Some(0.05)
}
fn d_one() -> f64 {
    1.0
}
fn d_shuffle() -> usize {
    1000
}
fn d_tick() -> f64 {
    50.0
}
fn d_snapshot() -> f64 {
    500.0
}
fn d_keep() -> usize {
    3
}
fn d_preview() -> usize {
    16
}
fn d_preview_steps() -> usize {
    18
}

/// `with:` of a train stage (see the module doc for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainParams {
    diffusion: DiffusionKind,
    #[serde(default)]
    resolution: Option<usize>,
    #[serde(default)]
    from: Option<usize>,
    #[serde(default)]
    to: Option<usize>,
    model: String,
    #[serde(default)]
    cond: bool,
    #[serde(default)]
    classes: Option<usize>,
    batch: usize,
    #[serde(default)]
    micro_batch: Option<usize>,
    #[serde(default)]
    steps: Option<u64>,
    #[serde(default)]
    duration_kimg: Option<f64>,
    #[serde(default)]
    seed: u64,
    #[serde(default = "d_lr")]
    lr: f64,
    #[serde(default = "d_betas")]
    betas: [f64; 2],
    #[serde(default = "d_eps")]
    eps: f64,
    #[serde(default = "d_rampup")]
    lr_rampup_kimg: f64,
    #[serde(default = "d_ema")]
    ema_halflife_kimg: f64,
    #[serde(default = "d_ema_ratio")]
    ema_rampup_ratio: Option<f64>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    label_dropout: Option<f64>,
    #[serde(default)]
    grad_clip: Option<f64>,
    #[serde(default = "d_one")]
    loss_scaling: f64,
    #[serde(default)]
    loss_divisor: Option<f64>,
    #[serde(default)]
    xflip: bool,
    #[serde(default = "d_shuffle")]
    shuffle_buffer: usize,
    #[serde(default = "d_tick")]
    tick_kimg: f64,
    #[serde(default = "d_snapshot")]
    snapshot_kimg: f64,
    #[serde(default = "d_keep")]
    keep_snapshots: usize,
    #[serde(default = "d_preview")]
    preview_images: usize,
    #[serde(default = "d_preview_steps")]
    preview_steps: usize,
    #[serde(default)]
    up_scale: Option<usize>,
    #[serde(default)]
    block_scale: Option<f64>,
    #[serde(default)]
    prob_length: Option<f64>,
    #[serde(default)]
    blur_sigma_max: Option<f64>,
    #[serde(default)]
    sampler: Option<serde_yaml::Value>,
    #[serde(default)]
    bf16: bool,
    #[serde(default)]
    fp16: bool,
    #[serde(default)]
    augment: Option<f64>,
}

/// `v > 0` (false for NaN).
fn positive(v: f64) -> bool {
    v > 0.0
}

/// `v ≥ 0` (false for NaN).
fn non_negative(v: f64) -> bool {
    v >= 0.0
}

fn err(key: &str, msg: impl Into<String>) -> ParamError {
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
    fn objective(&self) -> Result<Objective, ParamError> {
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
                let mut m = given;
                let mut default = |k: &str, v: serde_yaml::Value| {
                    m.entry(serde_yaml::Value::String(k.into())).or_insert(v);
                };
                default("up_scale", loss.up_scale.into());
                default("blur_sigma_max", loss.blur_sigma_max.into());
                default("truncation_t", loss.prob_length.into());
                default("s_block", loss.block_scale.into());
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
    fn resolve(&self, model: UnetConfig, label_dim: usize) -> Result<TrainConfig, ParamError> {
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
        })
    }
}

/// The model config named by `model` (a preset, or a file relative to `base`).
fn load_model(name: &str, base: &Path) -> anyhow::Result<UnetConfig> {
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

struct StageMonitor<'a>(&'a StageContext);

impl train::Monitor for StageMonitor<'_> {
    fn start(&self, total: u64, done: u64) {
        self.0.progress.start(Some(total), "img");
        self.0.progress.set_position(done);
    }
    fn progress(&self, nimg: u64, message: String) {
        self.0.progress.set_position(nimg);
        self.0.progress.message(message);
    }
    fn log(&self, line: &str) {
        self.0.progress.log(line);
    }
    fn cancelled(&self) -> bool {
        self.0.cancel.is_cancelled()
    }
}

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "train an EDM base stage or a relay (blurring) stage on paired shards; resumable"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: TrainParams = parse_params(with)?;
        if PRESETS.contains(&p.model.as_str()) {
            let model = UnetConfig::preset(&p.model).map_err(|e| err("model", e.to_string()))?;
            // The class count is known only once the data is read; any positive one checks the rest.
            let label_dim = if p.cond {
                p.classes.unwrap_or(model.label_dim.max(1))
            } else {
                0
            };
            p.resolve(model, label_dim)?;
        } else {
            p.objective()?;
            if p.model.trim().is_empty() {
                return Err(err("model", "`model` is empty").with_hint(format!(
                    "a preset ({}) or a config.json path",
                    PRESETS.join(", ")
                )));
            }
        }
        Ok(())
    }
    fn resumable(&self) -> bool {
        true
    }
    fn resources(&self, _with: &Params) -> Resources {
        Resources { gpu: true }
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: TrainParams = parse_params(with)?;
        if PRESETS.contains(&p.model.as_str()) {
            return Ok(serde_json::Value::Null);
        }
        // A model given as a file: its content is part of what the stage does.
        let cfg = load_model(&p.model, cx.pipeline_dir)?;
        Ok(serde_json::to_value(cfg)?)
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: TrainParams = parse_params(&cx.params)?;
        let input = cx.single_input()?;
        let objective = p.objective()?;
        // An early, clear error when the pairs lack a resolution this stage needs.
        if let Some(levels) = input
            .params
            .get("resolutions")
            .and_then(|v| v.as_sequence())
        {
            let have: Vec<u64> = levels.iter().filter_map(|v| v.as_u64()).collect();
            let need: Vec<usize> = match objective {
                Objective::Edm { resolution, .. } => vec![resolution],
                Objective::Relay { from, to, .. } => vec![from, to],
            };
            for r in need {
                if !have.contains(&(r as u64)) {
                    anyhow::bail!(
                        "stage `{}` needs {r}² images but `{}` made {have:?}; add {r} to its `resolutions`",
                        cx.name,
                        input.name
                    );
                }
            }
        }
        let model = load_model(&p.model, &cx.pipeline_dir)?;
        let label_dim = if !p.cond {
            0
        } else if let Some(c) = p.classes {
            c
        } else if model.label_dim > 0 {
            model.label_dim
        } else {
            train::data::count_classes(&input.dir)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "stage `{}` has `cond: true` but the samples of `{}` carry no `.cls` labels; \
                     use labelled data or set `cond: false`",
                    cx.name,
                    input.name
                )
            })?
        };
        let cfg = p
            .resolve(model, label_dim)
            .map_err(|e| anyhow::anyhow!("{}: {}", e.key.unwrap_or_default(), e.message))?;
        let world = World::from_env()?;
        let (device, device_name) = rank_device(cx, world)?;
        let group =
            collective(world, &device).map_err(|e| e.context(format!("stage `{}`", cx.name)))?;
        std::fs::create_dir_all(&cx.out)?;
        let summary = match train::train(
            &cfg,
            &input.dir,
            &cx.out,
            &device,
            &device_name,
            group.as_ref(),
            &StageMonitor(cx),
        ) {
            Ok(s) => s,
            Err(e) if e.downcast_ref::<TrainCancelled>().is_some() => {
                cx.progress.log(format!("{e:#}"));
                return Err(Cancelled.into());
            }
            Err(e) => return Err(e.context(format!("stage `{}`", cx.name))),
        };
        let mut info = serde_json::Map::new();
        let cost = serde_json::to_value(&summary.cost)?;
        if let serde_json::Value::Object(m) = cost {
            info.extend(m);
        }
        info.insert("diffusion".into(), cfg.objective.name().into());
        if let Some(l) = summary.final_loss {
            info.insert("final_loss".into(), l.into());
        }
        if let Some(s) = summary.resumed_from {
            info.insert("resumed_from_step".into(), s.into());
        }
        Ok(Outcome {
            images: Some(summary.cost.images_seen),
            info,
            partial: false,
        })
    }
}

/// The device of this rank: the stage's device for one process; `cuda:LOCAL_RANK` for
/// several (one process per GPU).
fn rank_device(cx: &StageContext, world: World) -> anyhow::Result<(candle_core::Device, String)> {
    if world.size == 1 {
        return Ok((cx.device.device()?, cx.device.describe()));
    }
    if !cx.device.is_accelerator() {
        bail!(
            "stage `{}`: WORLD_SIZE={} asks for data-parallel training, which runs one process per \
             CUDA GPU; on the CPU run one process (unset WORLD_SIZE / SLURM_NTASKS)",
            cx.name,
            world.size
        );
    }
    let spec = DeviceSpec::Cuda(world.local_rank);
    Ok((spec.device()?, spec.describe()))
}

/// How this rank talks to the others: nobody (one process) or NCCL.
fn collective(
    world: World,
    device: &candle_core::Device,
) -> anyhow::Result<Box<dyn train::parallel::Collective>> {
    if world.size == 1 {
        return Ok(Box::new(train::parallel::Solo));
    }
    #[cfg(feature = "nccl")]
    {
        Ok(Box::new(train::parallel::Nccl::new(world, device)?))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = device;
        bail!(
            "WORLD_SIZE={}: data-parallel training needs NCCL; build relay with `--features nccl`",
            world.size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<(), ParamError> {
        Train.check(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn parameter_checks() {
        check("{diffusion: edm, resolution: 64, model: adm-64, batch: 512, duration_kimg: 1000}")
            .unwrap();
        check("{diffusion: relay, from: 64, to: 256, model: adm-256, batch: 8, steps: 3}").unwrap();
        let e = check("{diffusion: relay, from: 64, to: 200, model: tiny, batch: 8, steps: 3}")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("to"));
        let e = check("{diffusion: edm, model: tiny, batch: 8, steps: 3}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resolution"));
        let e =
            check("{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 3, up_scale: 4}")
                .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("up_scale"));
        let e = check("{diffusion: edm, resolution: 16, model: tiny, batch: 8}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("steps"));
        let e = check(
            "{diffusion: edm, resolution: 16, model: tiny, batch: 8, micro_batch: 3, steps: 1}",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("micro_batch"));
        let e =
            check("{diffusion: edm, resolution: 18, model: tiny, batch: 8, steps: 1}").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resolution"));
        let e = check("{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1, sampler: {num_step: 3}}")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sampler.num_step"));
        let e = check(
            "{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1, lr_rampup_kmg: 3}",
        )
        .unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `lr_rampup_kimg`?"));
    }

    /// Every template under `stages/` with `kind: train` passes the checks.
    #[test]
    fn templates_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("stages");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let t: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if t["kind"] == "train" {
                Train
                    .check(&t["with"])
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "{n} train templates");
    }

    /// The relay sampler's blur schedule follows the stage's training schedule unless set.
    #[test]
    fn relay_sampler_defaults_follow_the_loss() {
        let p: TrainParams = parse_params(
            &serde_yaml::from_str(
                "{diffusion: relay, from: 8, to: 32, model: tiny, batch: 8, steps: 1, prob_length: 0.89, \
                 blur_sigma_max: 2.0, sampler: {num_steps: 150, truncation_t: 1.05}}",
            )
            .unwrap(),
        )
        .unwrap();
        let cfg = p.resolve(UnetConfig::tiny(), 0).unwrap();
        let SamplerDefaults::Blur(s) = &cfg.sampler else {
            panic!()
        };
        assert_eq!(
            (s.num_steps, s.up_scale, s.blur_sigma_max, s.truncation_t),
            (150, 4, 2.0, 1.05)
        );
        // JSON round trip (S_max = ∞ is stored as f64::MAX).
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), cfg);
        let p: TrainParams = parse_params(
            &serde_yaml::from_str(
                "{diffusion: edm, resolution: 16, model: tiny, batch: 8, steps: 1}",
            )
            .unwrap(),
        )
        .unwrap();
        let cfg = p.resolve(UnetConfig::tiny(), 0).unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), cfg);
        assert_eq!(cfg.loss_divisor, 256.0);
        assert_eq!(cfg.model.img_resolution, 16);
    }
}
