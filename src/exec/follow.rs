//! `relay exec STAGE` on a rank other than 0 of a data-parallel stage (`WORLD_SIZE` > 1,
//! one process per GPU under torchrun or `srun`): the stage's kind runs beside rank 0,
//! which holds the workdir lock, owns the output folder, commits the state file and
//! writes the run record. This process only computes: it takes no lock, and its scratch
//! folder under `.relay/ranks/` is removed when it ends.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::launch::Verdict;
use crate::base::cancel::Cancel;
use crate::base::world::World;
use crate::device::DeviceSpec;
use crate::plan::Plan;
use crate::stage::context::LogFile;
use crate::stage::{Progress, StageContext};

/// Kinds that can run on several ranks.
const DATA_PARALLEL_KINDS: &[&str] = &["train"];

/// Run `stage` of `plan` as a rank other than 0 of `world`, with Ctrl-C wired to
/// cancellation — if rank 0 says the stage runs ([`super::launch`]); a cached stage ends
/// this rank at once, and so does one rank 0 could not start (an error naming why).
pub fn run(plan: &Plan, stage: &str, device: DeviceSpec, world: World) -> anyhow::Result<()> {
    // What this rank can refuse on its own comes first: it needs no word from rank 0.
    let Some(node) = plan.nodes.iter().find(|n| n.name == stage) else {
        bail!("the pipeline has no stage `{stage}`; `relay plan` lists them");
    };
    if !DATA_PARALLEL_KINDS.contains(&node.kind.name()) {
        bail!(
            "stage `{stage}` ({}) runs as one process, but this is rank {} of a data-parallel \
             launch; launch it once (unset WORLD_SIZE / RANK)",
            node.kind.name(),
            world.rank
        );
    }
    // Under a launcher (torchrun and srun set MASTER_PORT) rank 0 answers first: a cached
    // stage ends here on any device. Without one there is nobody to ask.
    if std::env::var_os("MASTER_PORT").is_none() {
        crate::stage::train::check_world(stage, device, world)?;
        return follow_now(plan, stage, device, world.rank);
    }
    let (addr, port) = super::launch::address_from_env()?;
    let wait = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(std::time::Duration::from_secs(default))
    };
    match super::launch::await_verdict(
        world,
        &addr,
        port,
        wait("RELAY_RANK0_CONNECT_SECS", 120),
        wait("RELAY_RANK0_DECIDE_SECS", 600),
    )? {
        Verdict::Run => {}
        Verdict::Cached => {
            eprintln!(
                "rank {}: stage `{stage}` is up to date (rank 0 found it cached); nothing to do",
                world.rank
            );
            return Ok(());
        }
        Verdict::Failed(why) => bail!("rank 0 did not start stage `{stage}`: {why}"),
    }
    crate::stage::train::check_world(stage, device, world)?;
    follow_now(plan, stage, device, world.rank)
}

/// Follow rank 0 now, with Ctrl-C wired to cancellation.
fn follow_now(plan: &Plan, stage: &str, device: DeviceSpec, rank: usize) -> anyhow::Result<()> {
    let cancel = Cancel::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.spawn(super::cancel_on_ctrl_c(cancel.clone()));
    follow(plan, stage, device, rank, cancel)
}

/// Run `stage` of `plan` as rank `rank` (not 0). `cancel` is the process's Ctrl-C flag.
fn follow(
    plan: &Plan,
    stage: &str,
    device: DeviceSpec,
    rank: usize,
    cancel: Cancel,
) -> anyhow::Result<()> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.name == stage)
        .expect("checked by `run`");
    let workdir = &plan.spec.workdir;
    let mut inputs = Vec::new();
    for &d in &node.needs {
        let input = super::job::published_input(plan, workdir, d, String::new());
        if !input.dir.is_dir() {
            bail!(
                "stage `{stage}` needs `{}`, which has no output at {}; run it first \
                 (relay run PIPELINE --until {})",
                input.name,
                crate::util::display_path(&input.dir),
                input.name
            );
        }
        inputs.push(input);
    }
    let out: PathBuf = workdir
        .join(".relay")
        .join("ranks")
        .join(format!("{stage}.rank{rank}"));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cx = StageContext {
        name: node.name.clone(),
        kind: node.kind.name().to_string(),
        params: node.params.clone(),
        out: out.clone(),
        inputs,
        workdir: workdir.clone(),
        pipeline_dir: plan.spec.dir.clone(),
        project_root: plan.spec.project_root.clone(),
        fingerprint: "0".repeat(64),
        device,
        devices: Vec::new(),
        exe: None,
        worker: None,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        shard: None,
        world: World::from_env()?,
        cancel,
        progress: Progress::silent(),
        log: LogFile::none(),
    };
    let result = node.kind.run(&cx);
    let _ = std::fs::remove_dir_all(&out);
    result.map(|_| ())
}
