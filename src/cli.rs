//! The command line: clap definitions and what each subcommand does.

mod metrics;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceSpec;
use crate::exec::{Executor, RunOptions, RunReport, Status};
use crate::plan::Plan;
use crate::spec::{Override, SpecErrors};
use crate::stage::ShardSel;

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
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("format").required(true).multiple(true))]
pub struct ExportArgs {
    /// A `sample` stage's output folder (e.g. runs/quickstart/samples).
    pub samples: PathBuf,
    /// Write the ADM evaluator's .npz (arr_0: uint8 N x H x W x 3 in seed order; arr_1: labels).
    #[arg(long, value_name = "FILE", group = "format")]
    pub npz: Option<PathBuf>,
    /// Write an EDM-style PNG tree (subfolders of 1000 images).
    #[arg(long, value_name = "DIR", group = "format")]
    pub png_dir: Option<PathBuf>,
}

/// The pipeline file and overrides, shared by every subcommand.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file (e.g. pipelines/quickstart.yaml).
    pub pipeline: PathBuf,
    /// Override a parameter: -s stage.key=value (the value is read as YAML: 3, 0.15, true, [64, 16]).
    #[arg(short = 's', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<Override>,
    /// Replace a pipeline variable: --var hi=128 (read as YAML, like -s).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<crate::spec::VarOverride>,
    /// Use this working folder instead of the pipeline's `workdir:`.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

/// Which stages to run and how.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Run only this stage (repeatable); what it needs must already be there.
    #[arg(long, value_name = "STAGE")]
    pub only: Vec<String>,
    /// Run this stage and everything downstream of it.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// Run this stage and everything it needs.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Rerun even if up to date: all stages, or `--force=STAGE` (repeatable).
    #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = "*")]
    pub force: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// After a stage fails, keep running the stages that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Print what would run, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Device for GPU stages: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
    /// How many stages may run at once (default: the number of CPU cores, at least 2).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Pin results in this file instead of `relay.lock` beside the pipeline.
    #[arg(long, value_name = "FILE")]
    pub lockfile: Option<PathBuf>,
    /// Where stages run: `local` (this machine) or `slurm` (one sbatch job per stage,
    /// sampling as job arrays). Default: the pipeline's `executor:`, else local.
    #[arg(long, value_enum, value_name = "EXECUTOR")]
    pub executor: Option<ExecutorKind>,
    /// With `--executor slurm`: wait until the submitted jobs end, then report their states.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Parameters, tensors, channels and forward FLOPs per image of a preset
    /// (`tiny`, `adm-64`, `adm-256`) or a config.json / model folder.
    Info {
        /// A preset name, a config.json, or a model folder.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prepare N generated photo-sized JPEGs into 256+64 pairs (folder -> shard ->
    /// downsample) and print images/s (scripts/bench-prep.sh compares with Pillow).
    Prep {
        /// Number of images.
        #[arg(long, default_value_t = 500)]
        count: u64,
        /// Scratch folder (images are generated once and reused).
        #[arg(long, default_value = "target/bench-prep")]
        dir: PathBuf,
        /// Worker threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Time training steps (forward + backward + Adam) and sampling forwards of the U-Net
    /// and print images/s and FLOP/s (scripts/bench-vs-torch.sh compares with PyTorch).
    /// CPU threads: RAYON_NUM_THREADS (default: all cores).
    Model {
        /// A preset (`tiny`, `adm-64`, `adm-256`) or a config.json / model folder.
        #[arg(default_value = "tiny")]
        config: String,
        /// Images per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed steps of each kind (after 2 warm-up steps); the median is reported.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Input resolution (default: the config's); attention stays at the same levels.
        #[arg(long)]
        resolution: Option<usize>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// Run the network in bfloat16 (weights cast from float32 master weights, as the
        /// `train` stage's `bf16: true`); CUDA only.
        #[arg(long)]
        bf16: bool,
    },
    /// FID Inception-v3 images/s and FID's matrix square root at 2048x2048, beside
    /// pytorch-fid and scipy (benches/torch_fid.py) on the same images, weights, batch and
    /// threads. CPU threads: RAYON_NUM_THREADS (default: all cores).
    Metrics {
        /// Images (synthetic shapes).
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// Their side in pixels (resized to 299 by the network).
        #[arg(long, default_value_t = 64)]
        side: u32,
        /// Images per forward.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Timed passes over the images (after one warm-up batch).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// Scratch folder for the images, weights and covariances.
        #[arg(long, default_value = "target/bench-metrics")]
        dir: PathBuf,
        /// The Python for the peer (default: target/metrics-torch/venv, then python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// All-reduce a gradient-sized buffer over the data-parallel ranks with NCCL, check the
    /// sum and print the bandwidth. Launch one process per GPU (torchrun / srun set RANK,
    /// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); one process checks NCCL on one
    /// GPU. Needs `--features nccl`.
    Allreduce {
        /// Buffer size in millions of float32 values (adm-64 has ~296).
        #[arg(long, default_value_t = 64)]
        millions: usize,
        /// Timed all-reduces (after 2 warm-up ones); the median is reported.
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The stage (or matrix instance) to run.
    pub stage: String,
    /// Run only part I of N (0-based), e.g. `--shard 3/16` (sampling stages).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<ShardSel>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

fn parse_shard(s: &str) -> Result<ShardSel, String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let index: usize = i.parse().map_err(|_| format!("`{i}` is not a number"))?;
    let count: usize = n.parse().map_err(|_| format!("`{n}` is not a number"))?;
    if count == 0 || index >= count {
        return Err(format!("shard {index}/{count}: need 0 <= I < N"));
    }
    Ok(ShardSel { index, count })
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
        Command::Validate(a) => {
            let plan = load_plan(&a)?;
            println!(
                "{}: ok ({} stages, {} instances)",
                crate::util::display_path(&plan.spec.file),
                plan.spec.stages.len(),
                plan.nodes.len()
            );
            Ok(0)
        }
        Command::Graph(a) => {
            let plan = load_plan(&a.pipeline)?;
            print!(
                "{}",
                match a.format {
                    GraphFormat::Dot => plan.to_dot(),
                    GraphFormat::Mermaid => plan.to_mermaid(),
                }
            );
            Ok(0)
        }
        Command::Export(a) => {
            if let Some(npz) = &a.npz {
                let n = crate::sample::export::export_npz(&a.samples, npz)?;
                println!("wrote {} ({n} images)", crate::util::display_path(npz));
            }
            if let Some(dir) = &a.png_dir {
                let n = crate::sample::export::export_png_dir(&a.samples, dir)?;
                println!("wrote {} ({n} images)", crate::util::display_path(dir));
            }
            Ok(0)
        }
        Command::Metrics(a) => metrics::metrics(&a),
        Command::Stats(a) => metrics::stats(&a),
        Command::Show(a) => metrics::show(&a),
        Command::Model(ModelCommand::Info { name }) => {
            print!("{}", crate::model::report(&name)?);
            Ok(0)
        }
        Command::Bench(BenchCommand::Prep {
            count,
            dir,
            threads,
        }) => {
            let b = crate::data::bench::prep(&dir, count, threads, &crate::data::Quiet)?;
            println!("| images | threads | shard s | downsample s | total s | images/s |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                b.images,
                b.threads,
                b.shard_seconds,
                b.downsample_seconds,
                b.seconds,
                b.images_per_sec
            );
            println!("relay_images_per_sec={:.2}", b.images_per_sec);
            Ok(0)
        }
        Command::Bench(BenchCommand::Model {
            config,
            batch,
            steps,
            resolution,
            device,
            bf16,
        }) => {
            let b = crate::bench::model(&config, batch, steps, resolution, &device, bf16)?;
            println!("{}", b.table());
            Ok(0)
        }
        Command::Bench(BenchCommand::Metrics {
            count,
            side,
            batch,
            rounds,
            device,
            dir,
            python,
        }) => {
            let dev = device.device()?;
            let b = crate::metrics::bench::run(
                &dir,
                &dev,
                &device.describe(),
                count,
                side,
                batch,
                rounds,
                python,
            )?;
            println!("{}", b.table());
            Ok(0)
        }
        Command::Bench(BenchCommand::Allreduce { millions, reps }) => {
            println!("{}", crate::bench::allreduce(millions, reps)?);
            Ok(0)
        }
        Command::Kinds => {
            for k in crate::stage::builtin_kinds() {
                println!("{:<18} {}", k.name(), k.summary());
            }
            Ok(0)
        }
        Command::Status(a) => {
            let plan = load_plan(&a)?;
            print_status(&plan);
            Ok(0)
        }
        Command::Plan(a) => {
            let plan = load_plan(&a.pipeline)?;
            let opts = run_options(&a.select, true, DeviceSpec::Auto, None, false, None);
            let report = execute(plan, opts)?;
            print_plan(&report);
            Ok(0)
        }
        Command::Cancel(a) => {
            let plan = load_plan(&a)?;
            crate::exec::slurm::require_slurm()?;
            let ids = crate::exec::slurm::cancel_all(&plan.spec.workdir)?;
            if ids.is_empty() {
                println!("no queued or running Slurm jobs for this pipeline");
            } else {
                println!("cancelled {} job(s): {}", ids.len(), ids.join(" "));
            }
            Ok(0)
        }
        Command::Run(a) => {
            let plan = load_plan(&a.pipeline)?;
            let slurm = match a.executor {
                Some(e) => e == ExecutorKind::Slurm,
                None => plan.spec.executor.as_deref() == Some("slurm"),
            };
            if slurm {
                return run_slurm(plan, &a);
            }
            let mut opts = run_options(&a.select, a.dry_run, a.device, a.jobs, a.keep_going, None);
            opts.lockfile = a.lockfile.clone();
            let dry = opts.dry_run;
            let report = execute(plan, opts)?;
            if dry {
                print_plan(&report);
                return Ok(0);
            }
            print_summary(&report);
            Ok(exit_code(&report))
        }
        Command::Exec(a) => {
            let plan = load_plan(&a.pipeline)?;
            let world = crate::train::World::from_env()?;
            if world.rank > 0 {
                // A data-parallel rank beside rank 0, which runs the executor.
                let cancel = crate::stage::Cancel::new();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                rt.spawn(cancel_on_ctrl_c(cancel.clone()));
                crate::exec::follow::follow(&plan, &a.stage, a.device, world.rank, cancel)?;
                return Ok(0);
            }
            let select = SelectArgs {
                only: vec![a.stage.clone()],
                from: None,
                until: None,
                force: vec![],
            };
            let opts = run_options(&select, false, a.device, Some(1), false, a.shard);
            let report = execute(plan, opts)?;
            print_summary(&report);
            if let Some(s) = report
                .stages
                .iter()
                .find(|s| matches!(s.status, Status::Blocked(_)))
            {
                return Err(BadInput(format!(
                    "stage `{}` is needed by `{}` but has no complete output; run it first (relay run PIPELINE --until {})",
                    s.name, a.stage, s.name
                ))
                .into());
            }
            Ok(exit_code(&report))
        }
    }
}

/// `relay run --executor slurm`: submit what must run as sbatch jobs.
fn run_slurm(plan: Plan, a: &RunArgs) -> anyhow::Result<i32> {
    use crate::exec::slurm::{self, Invocation, SlurmPlan};
    if !a.dry_run {
        slurm::require_slurm()?;
    }
    let opts = run_options(&a.select, true, a.device, a.jobs, false, None);
    let report = execute(plan.clone(), opts)?;
    let inv = Invocation {
        exe: std::env::current_exe()?,
        pipeline: plan.spec.file.clone(),
        overrides: a.pipeline.set.iter().map(|o| o.text.clone()).collect(),
        vars: a.pipeline.vars.iter().map(|v| v.text.clone()).collect(),
        workdir: plan.spec.workdir.clone(),
        cwd: std::env::current_dir()?,
    };
    let max_array = if a.dry_run {
        1001
    } else {
        slurm::max_array_size()
    };
    let sp = SlurmPlan::new(&plan, &report, &inv, max_array)?;
    if sp.jobs.is_empty() {
        print_plan(&report);
        println!("nothing to submit: every stage is up to date");
        return Ok(0);
    }
    if a.dry_run {
        for j in &sp.jobs {
            let after = if j.after.is_empty() {
                String::new()
            } else {
                format!(" (after {})", j.after.join(", "))
            };
            println!(
                "# ---- {} ({}){after}: {}",
                j.stage,
                j.role,
                crate::util::display_path(&j.script)
            );
            println!("{}", j.text);
        }
        return Ok(0);
    }
    sp.write_scripts()?;
    let submitted = sp.submit(&plan.spec.workdir)?;
    let w = submitted
        .iter()
        .map(|s| s.0.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<w$}  {:<15} job", "stage", "role");
    for (stage, role, id) in &submitted {
        println!("{stage:<w$}  {role:<15} {id}");
    }
    if !a.wait {
        println!("submitted; `relay status` shows their states, `relay cancel` stops them");
        return Ok(0);
    }
    let ids: Vec<String> = submitted.iter().map(|s| s.2.clone()).collect();
    slurm::wait(&ids, &crate::stage::Cancel::new())?;
    let mut failed = false;
    for (stage, role, id) in &submitted {
        let states = slurm::job_states(id);
        let bad = states.iter().any(|s| s != "COMPLETED");
        failed |= bad;
        println!(
            "{stage:<w$}  {role:<15} {id}  {}",
            summarize_states(&states)
        );
    }
    Ok(if failed { 1 } else { 0 })
}

/// `COMPLETED x4` style summary of job states.
fn summarize_states(states: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for s in states {
        match counts.iter_mut().find(|c| &c.0 == s) {
            Some(c) => c.1 += 1,
            None => counts.push((s.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(s, n)| {
            if *n > 1 {
                format!("{s} x{n}")
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_options(
    s: &SelectArgs,
    dry_run: bool,
    device: DeviceSpec,
    jobs: Option<usize>,
    keep_going: bool,
    shard: Option<ShardSel>,
) -> RunOptions {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    RunOptions {
        only: s.only.clone(),
        from: s.from.clone(),
        until: s.until.clone(),
        force: s.force.clone(),
        keep_going,
        dry_run,
        device,
        jobs: jobs.unwrap_or(cores.max(2)),
        shard,
        lockfile: None,
    }
}

/// Run the executor on a tokio runtime, with Ctrl-C wired to its cancellation flag.
fn execute(plan: Plan, opts: RunOptions) -> anyhow::Result<RunReport> {
    let exec = Executor::new(plan, opts).map_err(SpecErrors::from)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        tokio::spawn(cancel_on_ctrl_c(exec.cancel_handle()));
        exec.run().await
    })
}

/// The first Ctrl-C sets `cancel` (stages stop at their next safe point); a second one
/// exits at once with 130.
async fn cancel_on_ctrl_c(cancel: crate::stage::Cancel) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!(
            "\ninterrupt: stopping stages at their next safe point (Ctrl-C again to abort now)"
        );
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(130);
        }
    }
}

fn exit_code(r: &RunReport) -> i32 {
    if r.failed() {
        1
    } else if r.cancelled {
        130
    } else {
        0
    }
}

fn print_plan(r: &RunReport) {
    let w = r
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    for s in &r.stages {
        let detail = match &s.status {
            Status::WouldRun(why) => why.join("; "),
            Status::Blocked(why) | Status::Skipped(why) | Status::Failed(why) => why.clone(),
            _ => String::new(),
        };
        let word = match &s.status {
            Status::WouldRun(_) => "run",
            other => other.word(),
        };
        println!("{:<w$}  {:<14} {:<8} {}", s.name, s.kind, word, detail);
    }
}

/// Where to look: the well-known files of the stages that are done.
fn print_results(r: &RunReport) {
    let known = [
        ("preview.png", "preview grid"),
        ("manifest.parquet", "manifest"),
        ("README.md", "model card"),
        ("loss.png", "loss curve"),
        ("samples.npz", "npz for the ADM evaluator"),
    ];
    let mut results = Vec::new();
    for s in r
        .stages
        .iter()
        .filter(|s| matches!(s.status, Status::Done | Status::Cached))
    {
        if let Some(dir) = &s.output {
            for (file, what) in known {
                let path = dir.join(file);
                if path.is_file() && (file != "manifest.parquet" || s.kind == "sample") {
                    results.push(format!("  {what:<26} {}", crate::util::display_path(&path)));
                }
            }
        }
    }
    if !results.is_empty() {
        println!("\nresults:");
        for l in results {
            println!("{l}");
        }
    }
}

fn print_summary(r: &RunReport) {
    let w = r
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<w$}  {:<10} {:>9}  output", "stage", "status", "seconds");
    for s in &r.stages {
        let out = s
            .output
            .as_ref()
            .map(|p| crate::util::display_path(p))
            .unwrap_or_else(|| match &s.status {
                Status::Skipped(why) | Status::Blocked(why) => format!("({why})"),
                _ => String::new(),
            });
        println!(
            "{:<w$}  {:<10} {:>9.1}  {}",
            s.name,
            s.status.word(),
            s.seconds,
            out
        );
    }
    print_results(r);
    let failed = r
        .stages
        .iter()
        .filter(|s| matches!(s.status, Status::Failed(_)))
        .count();
    if failed > 0 {
        println!("{failed} stage(s) failed; their logs are in .relay/logs/ under the workdir");
    }
}

fn print_status(plan: &Plan) {
    let records = crate::exec::record::read_all(&plan.spec.workdir);
    let jobs = crate::exec::slurm::JobsFile::load(&plan.spec.workdir);
    let w = plan
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<w$}  {:<10} {:<21} {:>9} {:>12}  output",
        "stage", "last run", "ended (UTC)", "seconds", "device-hours"
    );
    for &i in &plan.order {
        let name = &plan.nodes[i].name;
        match records.iter().rev().find(|r| &r.stage == name) {
            Some(r) => println!(
                "{:<w$}  {:<10} {:<21} {:>9.1} {:>12.4}  {}",
                name,
                r.status,
                r.ended,
                r.seconds,
                r.device_hours,
                r.output
                    .as_ref()
                    .map(|o| crate::util::display_path(&o.dir))
                    .unwrap_or_default()
            ),
            None => println!("{:<w$}  {:<10}", name, "never"),
        }
        if let Some(js) = jobs.stages.get(name) {
            for j in js {
                let states = crate::exec::slurm::job_states(&j.id);
                let states = if states.is_empty() {
                    "unknown to Slurm now".to_string()
                } else {
                    summarize_states(&states)
                };
                println!(
                    "{:<w$}    slurm job {} ({}) submitted {}: {}",
                    "", j.id, j.role, j.submitted, states
                );
            }
        }
    }
}
