//! Training the stages of a relay cascade: the EDM base stage (Karras et al. 2022) and the
//! relay (blurring) stages of RDM (Teng et al. 2024), as RelayDiffusion's
//! `training/training_loop.py` runs them. A library: no stage context, no YAML; progress and
//! cancellation come in through a [`Monitor`]. The `train` stage kind is the adapter.
//!
//! 1. [`TrainConfig`] ([`config`]): every setting, resolved; [`StageConfig`] is the
//!    `config.json` written beside the weights.
//! 2. [`data`]: the seeded, resumable stream of training images from paired shards.
//! 3. [`optim`]: seeded initialisation, Adam, EMA, gradient clean-up.
//! 4. [`trainer::train`]: the loop; [`snapshot`] writes and reads the exact-resume state;
//!    [`log`] the per-tick log, `train_log.parquet` and `loss.png`; [`preview`] the grids.
//!
//! Exact resume: all randomness is keyed by (seed, step, sample index) (noise levels and
//! noise through [`crate::diffusion::noise::SeedNoise`], label dropout, x-flips and the
//! shuffle through the data position), so the step counter and the data position are the
//! whole RNG state. On the CPU a resumed run ends with the same weights bit for bit as an
//! uninterrupted one, also with dropout: its masks are drawn from keys too
//! ([`crate::model::dropout`]).
//!
//! Data parallel ([`parallel`]): one thread per local device (`relay run --devices`), or
//! one process per GPU with rank and world size from the launcher (`relay exec` reads
//! [`World::from_env`]: torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK` or Slurm's
//! `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID`). Each rank takes its slice of `batch / world`
//! images of every step of the one data stream ([`data`]); gradients and loss sums are summed over the
//! ranks with NCCL (`--features nccl`) after every step. Rank 0 resumes, logs and writes
//! snapshots (with every rank's data position); the others take its state at the start.

pub mod augment;
pub mod config;
pub mod data;
pub mod fused_adam;
pub mod log;
pub mod optim;
pub mod parallel;
pub mod preview;
pub mod snapshot;
pub mod trainer;

use std::path::PathBuf;

pub use config::{
    load_stage_dir, Cost, Duration, Objective, SamplerDefaults, StageConfig, TrainConfig,
};
pub use trainer::{train, TrainSummary};

/// Progress and cancellation of a training run.
pub trait Monitor {
    /// Training of `total` images starts, `done` of them already done (resume).
    fn start(&self, _total: u64, _done: u64) {}
    /// After every step: images seen so far and a short status.
    fn progress(&self, _nimg: u64, _message: String) {}
    /// A log line (ticks, resume, snapshots).
    fn log(&self, _line: &str) {}
    /// `true` once the run should save its state and stop.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A monitor that reports nothing and never cancels.
pub struct Quiet;
impl Monitor for Quiet {}

/// Returned (inside `anyhow::Error`) when a run stopped on request after saving its state.
#[derive(Debug, thiserror::Error)]
#[error("training cancelled at step {step}; the state is saved in `{}`", snapshot.display())]
pub struct TrainCancelled {
    pub step: u64,
    pub snapshot: PathBuf,
}

pub use crate::base::world::World;
