//! The `train` stage's parameters as written under `with:` (see the table in the module
//! doc of [`super`]), with the reference defaults. Checked and turned into a
//! [`TrainConfig`](crate::train::TrainConfig) by [`super::resolve`].

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum DiffusionKind {
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
pub(super) struct TrainParams {
    pub(super) diffusion: DiffusionKind,
    #[serde(default)]
    pub(super) resolution: Option<usize>,
    #[serde(default)]
    pub(super) from: Option<usize>,
    #[serde(default)]
    pub(super) to: Option<usize>,
    pub(super) model: String,
    #[serde(default)]
    pub(super) cond: bool,
    #[serde(default)]
    pub(super) classes: Option<usize>,
    pub(super) batch: usize,
    #[serde(default)]
    pub(super) micro_batch: Option<usize>,
    #[serde(default)]
    pub(super) steps: Option<u64>,
    #[serde(default)]
    pub(super) duration_kimg: Option<f64>,
    #[serde(default)]
    pub(super) seed: u64,
    #[serde(default = "d_lr")]
    pub(super) lr: f64,
    #[serde(default = "d_betas")]
    pub(super) betas: [f64; 2],
    #[serde(default = "d_eps")]
    pub(super) eps: f64,
    #[serde(default = "d_rampup")]
    pub(super) lr_rampup_kimg: f64,
    #[serde(default = "d_ema")]
    pub(super) ema_halflife_kimg: f64,
    #[serde(default = "d_ema_ratio")]
    pub(super) ema_rampup_ratio: Option<f64>,
    #[serde(default)]
    pub(super) dropout: Option<f64>,
    #[serde(default)]
    pub(super) label_dropout: Option<f64>,
    #[serde(default)]
    pub(super) grad_clip: Option<f64>,
    #[serde(default = "d_one")]
    pub(super) loss_scaling: f64,
    #[serde(default)]
    pub(super) loss_divisor: Option<f64>,
    #[serde(default)]
    pub(super) xflip: bool,
    #[serde(default = "d_shuffle")]
    pub(super) shuffle_buffer: usize,
    #[serde(default = "d_tick")]
    pub(super) tick_kimg: f64,
    #[serde(default = "d_snapshot")]
    pub(super) snapshot_kimg: f64,
    #[serde(default = "d_keep")]
    pub(super) keep_snapshots: usize,
    #[serde(default = "d_preview")]
    pub(super) preview_images: usize,
    #[serde(default = "d_preview_steps")]
    pub(super) preview_steps: usize,
    #[serde(default)]
    pub(super) up_scale: Option<usize>,
    #[serde(default)]
    pub(super) block_scale: Option<f64>,
    #[serde(default)]
    pub(super) prob_length: Option<f64>,
    #[serde(default)]
    pub(super) blur_sigma_max: Option<f64>,
    #[serde(default)]
    pub(super) sampler: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(super) bf16: bool,
    #[serde(default)]
    pub(super) fp16: bool,
    /// EDM's augmentation pipe at this probability (RDM's multipliers); 0 or null: off.
    #[serde(default)]
    pub(super) augment: Option<f64>,
    /// Continue another run's training: an upstream `train` stage in `needs:`, or a path
    /// to a train stage's output or to one snapshot folder.
    #[serde(default)]
    pub(super) init_from: Option<String>,
}
