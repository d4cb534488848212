//! Stage kinds: turn a plan node into library calls.
//!
//! Every kind implements [`StageKind`] and is listed in [`builtin_kinds`]. A kind
//! 1. declares and checks its parameters ([`StageKind::check`], before anything runs),
//! 2. says what it holds while running ([`StageKind::resources`]),
//! 3. may add material to its fingerprint ([`StageKind::fingerprint_extra`]), and
//! 4. does its job in [`StageKind::run`], called on a blocking thread with a [`StageContext`].
//!
//! A kind writes only into `cx.out`, a private folder that the executor renames into
//! place when `run` returns `Ok`. If that folder already holds files, they are what an
//! interrupted earlier run of the *same* fingerprint left: long stages resume from them.

pub mod command;
pub mod context;
pub mod downsample;
pub mod fanout;
pub mod metrics;
pub mod params;
pub mod publish;
pub mod sample;
pub mod shard;
pub mod source;
pub mod train;

use std::sync::Arc;

pub use context::{Cancel, Cancelled, Input, Outcome, Progress, Reporter, ShardSel, StageContext};
pub use params::{parse_params, ParamError, Params};

/// What a running stage holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// The stage wants an accelerator (a GPU stage holds its device while it runs;
    /// on a CPU-only machine it runs on the CPU like any other stage).
    pub gpu: bool,
    /// Its work is split into shards that workers on several devices share (sampling):
    /// when the run hands out devices, it takes every free one and runs a worker on each.
    pub fan_out: bool,
}

/// Context available when a fingerprint is computed (before the stage runs).
pub struct PlanContext<'a> {
    /// The folder of the pipeline file: `deps` and relative paths are resolved against it.
    pub pipeline_dir: &'a std::path::Path,
    /// The project root (the folder holding `stages/` and `datasets/`, if any).
    pub project_root: &'a std::path::Path,
}

/// One stage kind (`command`, `source/shapes`, `train`, ...).
pub trait StageKind: Send + Sync + 'static {
    /// The name used in `uses:` / `kind:`.
    fn name(&self) -> &'static str;
    /// Format version of what the kind writes; part of every fingerprint, so bumping it
    /// invalidates old outputs.
    fn version(&self) -> u32;
    /// One line for `relay kinds` and error messages.
    fn summary(&self) -> &'static str;
    /// Parse and check the parameters (`with:`); called for every stage before anything runs.
    fn check(&self, with: &Params) -> Result<(), ParamError>;
    /// Checks that need the upstream stages' names, given as (instance, declared stage).
    fn check_inputs(&self, _with: &Params, _inputs: &[(&str, &str)]) -> Result<(), ParamError> {
        Ok(())
    }
    /// Whether an interrupted run leaves work that a rerun of the same fingerprint can
    /// continue from. Resumable kinds get the same private folder back; others get a fresh one.
    fn resumable(&self) -> bool {
        false
    }
    /// For kinds that split their work into shards (`relay exec --shard I/N`): the shard
    /// count, and which shards are not complete yet in the private folder `out`.
    fn shards(&self, _with: &Params, _out: &std::path::Path) -> Option<(usize, Vec<usize>)> {
        None
    }
    /// What the stage holds while it runs.
    fn resources(&self, _with: &Params) -> Resources {
        Resources::default()
    }
    /// Extra material hashed into the fingerprint (e.g. digests of input files that live
    /// outside the pipeline's stages).
    fn fingerprint_extra(
        &self,
        _cx: &PlanContext<'_>,
        _with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    /// Do the work. Runs on a blocking thread; check `cx.cancel` at safe points.
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome>;
}

/// Every built-in kind.
pub fn builtin_kinds() -> Vec<Arc<dyn StageKind>> {
    vec![
        Arc::new(command::Command),
        Arc::new(sample::Sample),
        Arc::new(metrics::Metrics),
        Arc::new(publish::Publish),
        Arc::new(source::SourceFolder),
        Arc::new(source::SourceZip),
        Arc::new(source::SourceWebdataset),
        Arc::new(source::SourceShapes),
        Arc::new(shard::Shard),
        Arc::new(downsample::Downsample),
        Arc::new(train::Train),
    ]
}

/// Find a kind by name.
pub fn find_kind(name: &str) -> Option<Arc<dyn StageKind>> {
    builtin_kinds().into_iter().find(|k| k.name() == name)
}

/// The names of every built-in kind (for did-you-mean hints).
pub fn kind_names() -> Vec<&'static str> {
    builtin_kinds().iter().map(|k| k.name()).collect()
}
