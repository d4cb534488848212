//! `relay exec STAGE` on a rank other than 0 of a data-parallel stage (`WORLD_SIZE` > 1,
//! one process per GPU under torchrun or `srun`): the stage's kind runs beside rank 0,
//! which holds the workdir lock, owns the output folder, commits the state file and
//! writes the run record. This process only computes: it takes no lock, and its scratch
//! folder under `.relay/ranks/` is removed when it ends.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::base::cancel::Cancel;
use crate::device::DeviceSpec;
use crate::plan::Plan;
use crate::stage::context::LogFile;
use crate::stage::{Progress, StageContext};

/// Kinds that can run on several ranks.
const DATA_PARALLEL_KINDS: &[&str] = &["train"];

/// Run `stage` of `plan` as rank `rank` (not 0), with Ctrl-C wired to cancellation.
pub fn run(plan: &Plan, stage: &str, device: DeviceSpec, rank: usize) -> anyhow::Result<()> {
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
    let Some(node) = plan.nodes.iter().find(|n| n.name == stage) else {
        bail!("the pipeline has no stage `{stage}`; `relay plan` lists them");
    };
    if !DATA_PARALLEL_KINDS.contains(&node.kind.name()) {
        bail!(
            "stage `{stage}` ({}) runs as one process, but this is rank {rank} of a data-parallel \
             launch; launch it once (unset WORLD_SIZE / RANK)",
            node.kind.name()
        );
    }
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
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        shard: None,
        cancel,
        progress: Progress::silent(),
        log: LogFile::none(),
    };
    let result = node.kind.run(&cx);
    let _ = std::fs::remove_dir_all(&out);
    result.map(|_| ())
}
