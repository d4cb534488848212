//! Flags shared by several subcommands, and the subcommands' own argument structs.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::device::DeviceSpec;
use crate::exec::RunOptions;
use crate::spec::Override;
use crate::stage::ShardSel;

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
    /// Device for GPU stages: auto, cpu, cuda or cuda:N. `auto` is every CUDA device of a
    /// `cuda` build (see --devices), else the CPU.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
    /// The devices relay hands out to GPU stages: `0,1,2,3` (CUDA devices, after
    /// CUDA_VISIBLE_DEVICES) or `cpu*4` (four CPU workers). A training stage holds
    /// `resources.gpus` of them (default 1) and trains data-parallel on them; a sampling
    /// stage takes every free one and runs a worker on each. Default: the pipeline's
    /// `devices:`, else every CUDA device of a `cuda` build, else none (CPU stages share
    /// the machine through --jobs).
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
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
pub struct GcArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// The devices `relay run` would hand out (as `relay run --devices`): the plan says
    /// how many each GPU stage would hold.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
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

pub(crate) fn run_options(
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
        devices: Vec::new(),
        exe: None,
        jobs: jobs.unwrap_or(cores.max(2)),
        shard,
        lockfile: None,
        world: Default::default(),
        launch: None,
    }
}
