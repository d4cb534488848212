//! The command line: clap definitions ([`Cli`], [`Command`]) and the dispatch to one file
//! per subcommand family:
//!
//! | file | subcommands |
//! |------|-------------|
//! | [`args`] | the flags shared by several subcommands |
//! | [`run`] | `run`, `plan`, `exec` (the local executor) |
//! | [`slurm`] | `run --executor slurm`, `cancel` |
//! | [`print`] | the tables: plan, run summary, status |
//! | [`tools`] | `validate`, `graph`, `export`, `model`, `bench`, `kinds` |
//! | [`metrics`] | `metrics`, `stats`, `show` (the experiment table) |
//!
//! `main.rs` only parses, calls [`dispatch`], prints the error chain and picks the exit code.

mod args;
mod metrics;
mod print;
mod run;
mod slurm;
mod tools;

use clap::{Parser, Subcommand};

use crate::plan::Plan;
use crate::spec::SpecErrors;
pub use args::*;

/// relay: run cascaded (relay) diffusion experiments declared as YAML pipelines.
///
/// A pipeline is a DAG of stages (prepare data -> train each resolution stage ->
/// publish -> sample -> evaluate). relay runs what is out of date, concurrently where the
/// graph allows, caches the rest by fingerprint, and records every run under
/// `WORKDIR/.relay/`.
///
/// Exit codes: 0 ok, 1 a stage failed, 2 bad input (pipeline file, flags, files),
/// 130 interrupted.
#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every stage that is not up to date, in dependency order.
    Run(RunArgs),
    /// Print, for every stage, whether it would run, is cached, or is blocked, and why.
    Plan(PlanArgs),
    /// Print the pipeline's DAG as Graphviz DOT or Mermaid.
    Graph(GraphArgs),
    /// Show the last run of each stage: when, how long, device-hours, outputs.
    Status(PipelineArgs),
    /// Parse and check a pipeline without running anything.
    Validate(PipelineArgs),
    /// Run one stage whose inputs are already present (what a cluster worker runs).
    ///
    /// Data-parallel training: launch one process per GPU (torchrun --no-python, srun) with
    /// RANK/WORLD_SIZE/LOCAL_RANK (or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) and
    /// MASTER_ADDR/MASTER_PORT set; rank 0 runs and records the stage, the others compute.
    Exec(ExecArgs),
    /// Cancel the pipeline's Slurm jobs that are still queued or running (scancel).
    Cancel(PipelineArgs),
    /// Remove kept interrupted work that no rerun resumes from: partial outputs of other
    /// fingerprints (kept when a parameter changed, listed by `relay status`) and leftovers
    /// of dead runs. Never implicit; a stage another process runs is left alone.
    Gc(GcArgs),
    /// Network configurations: parameter counts and FLOPs.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Benchmarks that print a table (data preparation, the network).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List the built-in stage kinds.
    Kinds,
    /// Hand a sample stage's output to standard evaluators (ADM .npz, EDM PNG folders).
    Export(ExportArgs),
    /// FID, sFID, IS, precision and recall of samples against a reference (FID Inception-v3).
    Metrics(metrics::MetricsArgs),
    /// Write an ADM reference batch (mu, sigma, mu_s, sigma_s) for a set of images.
    Stats(metrics::StatsArgs),
    /// The experiment table: one row per evaluated stage instance, with its matrix values,
    /// changed parameters, metrics, cost and status.
    Show(metrics::ShowArgs),
    /// One worker of a sampling stage fanned out over devices (started by `relay run`).
    #[command(hide = true)]
    Worker {
        /// The job file its parent wrote.
        job: std::path::PathBuf,
    },
}

/// An error caused by the user's input (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Load and validate a pipeline.
pub fn load_plan(args: &PipelineArgs) -> Result<Plan, SpecErrors> {
    let mut spec = crate::spec::load_with_vars(&args.pipeline, &args.set, &args.vars)?;
    if let Some(w) = &args.workdir {
        spec.workdir = std::path::absolute(w).unwrap_or_else(|_| w.clone());
    }
    Plan::from_spec(spec)
}

/// Run a subcommand; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Plan(a) => run::plan(a),
        Command::Exec(a) => run::exec(a),
        Command::Status(a) => run::status(&a),
        Command::Cancel(a) => slurm::cancel(&a),
        Command::Gc(a) => run::gc(&a),
        Command::Validate(a) => tools::validate(&a),
        Command::Graph(a) => tools::graph(&a),
        Command::Export(a) => tools::export(&a),
        Command::Model(m) => tools::model(m),
        Command::Bench(b) => tools::bench(b),
        Command::Kinds => tools::kinds(),
        Command::Metrics(a) => metrics::metrics(&a),
        Command::Stats(a) => metrics::stats(&a),
        Command::Show(a) => metrics::show(&a),
        Command::Worker { job } => crate::stage::fanout::run_worker(&job).map(|()| 0),
    }
}
