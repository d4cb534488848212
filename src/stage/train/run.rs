//! Running the `train` stage: the data's resolutions and labels, this process's device and
//! collective, the trainer, and the cost figures that go into the run record.

use anyhow::bail;

use super::params::TrainParams;
use super::resolve::load_model;
use crate::device::DeviceSpec;
use crate::stage::{parse_params, Cancelled, Outcome, StageContext};
use crate::train::{self, Objective, TrainCancelled, World};

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

/// Train the stage of `cx` (see the module doc of [`super`]).
pub(super) fn run(cx: &StageContext) -> anyhow::Result<Outcome> {
    let p: TrainParams = parse_params(&cx.params)?;
    // The pairs are the input that is not the run `init_from` continues.
    let init_input = p
        .init_from
        .as_ref()
        .and_then(|n| cx.inputs.iter().find(|i| &i.name == n));
    let data: Vec<&crate::stage::Input> = cx
        .inputs
        .iter()
        .filter(|i| Some(&i.name) != init_input.map(|i| &i.name))
        .collect();
    let input = match data.as_slice() {
        [one] => *one,
        _ => cx.single_input()?,
    };
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
    let mut cfg = p
        .resolve(model, label_dim)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.key.unwrap_or_default(), e.message))?;
    if let Some(name) = &p.init_from {
        let src = match init_input {
            Some(i) => i.dir.clone(),
            None => cx.resolve_path(name),
        };
        let snap = newest_snapshot(&src)
            .map_err(|e| anyhow::anyhow!("stage `{}`: `init_from: {name}`: {e}", cx.name))?;
        cx.progress
            .log(format!("init_from: continuing from {}", snap.display()));
        cfg.init_from = Some(snap);
    }
    // Several ranks without an explicit `micro_batch`: each rank's share of the batch in
    // one pass (the default of one rank is the whole batch in one pass).
    let ranks = cx.devices.len().max(cx.world.size).max(1);
    if p.micro_batch.is_none() && ranks > 1 && cfg.batch.is_multiple_of(ranks) {
        cfg.micro_batch = cfg.batch / ranks;
    }
    std::fs::create_dir_all(&cx.out)?;
    let trained = if cx.devices.len() > 1 {
        local_ranks(cx, &cfg, &input.dir)
    } else {
        let world = cx.world;
        let (device, device_name) = rank_device(cx, world)?;
        let group =
            collective(world, &device).map_err(|e| e.context(format!("stage `{}`", cx.name)))?;
        train::train(
            &cfg,
            &input.dir,
            &cx.out,
            &device,
            &device_name,
            group.as_ref(),
            &StageMonitor(cx),
        )
    };
    let summary = match trained {
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

/// The snapshot a run continues from: `dir` itself when it is one, else the newest of
/// `dir/snapshots/` (a train stage's output).
pub(super) fn newest_snapshot(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    if dir.join(train::snapshot::STATE_JSON).is_file() {
        return Ok(dir.to_path_buf());
    }
    let snaps = dir.join("snapshots");
    match train::snapshot::list(&snaps).ok().and_then(|l| l.last().cloned()) {
        Some(s) => Ok(s),
        None => bail!(
            "{} holds no training snapshot (give a train stage's output, a train stage in `needs:`, or one snapshot folder)",
            crate::util::display_path(dir)
        ),
    }
}

/// Rank r > 0 of a local data-parallel run: it writes nothing the stage keeps, and stops
/// when the run is cancelled (rank 0 reports progress).
struct RankMonitor<'a>(&'a StageContext);

impl train::Monitor for RankMonitor<'_> {
    fn start(&self, _total: u64, _done: u64) {}
    fn progress(&self, _nimg: u64, _message: String) {}
    fn log(&self, _line: &str) {}
    fn cancelled(&self) -> bool {
        self.0.cancel.is_cancelled()
    }
}

/// Data-parallel training on the devices the executor handed the stage: one thread per
/// device, gradients summed through memory ([`train::parallel::ThreadGroup`]). Rank 0
/// writes the stage's output and snapshots; the others work in scratch folders that are
/// removed afterwards. The result is rank 0's; an error on any rank stops all of them.
fn local_ranks(
    cx: &StageContext,
    cfg: &train::TrainConfig,
    data: &std::path::Path,
) -> anyhow::Result<train::TrainSummary> {
    let n = cx.devices.len();
    let scratch = cx.workdir.join(".relay").join("tmp").join(&cx.name);
    cx.progress.log(format!(
        "training data-parallel on {n} devices ({}): {} images per step, {} per device",
        cx.devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.batch,
        cfg.batch / n
    ));
    let results: Vec<anyhow::Result<train::TrainSummary>> = std::thread::scope(|s| {
        let handles: Vec<_> = train::parallel::ThreadGroup::new(n)
            .into_iter()
            .zip(&cx.devices)
            .enumerate()
            .map(|(rank, (group, token))| {
                let scratch = &scratch;
                s.spawn(move || -> anyhow::Result<train::TrainSummary> {
                    let device = token.spec.device()?;
                    let out = if rank == 0 {
                        cx.out.clone()
                    } else {
                        let o = scratch.join(format!("rank-{rank}"));
                        let _ = std::fs::remove_dir_all(&o);
                        std::fs::create_dir_all(&o)?;
                        o
                    };
                    let monitor: Box<dyn train::Monitor + '_> = if rank == 0 {
                        Box::new(StageMonitor(cx))
                    } else {
                        Box::new(RankMonitor(cx))
                    };
                    let r = train::train(
                        cfg,
                        data,
                        &out,
                        &device,
                        &token.name,
                        &group,
                        monitor.as_ref(),
                    );
                    // This rank is done: the others must not wait for it any more.
                    drop(group);
                    if rank > 0 {
                        let _ = std::fs::remove_dir_all(&out);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a training rank panicked")))
            })
            .collect()
    });
    let mut results = results.into_iter();
    let first = results.next().expect("at least two ranks");
    // Rank 0's error says most (a cancellation, a NaN step); a peer's when rank 0 only
    // saw the group break.
    match first {
        Ok(s) => Ok(s),
        Err(e) if e.downcast_ref::<TrainCancelled>().is_some() => Err(e),
        Err(e) => Err(results
            .filter_map(Result::err)
            .find(|p| !format!("{p:#}").contains("of the thread group stopped"))
            .unwrap_or(e)),
    }
}

/// Refuse a data-parallel launch this build or device cannot do, before anything waits
/// for the other ranks: several ranks run one process per CUDA GPU.
pub fn check_world(stage: &str, device: DeviceSpec, world: World) -> anyhow::Result<()> {
    if world.size > 1 && !device.is_accelerator() {
        bail!(
            "stage `{stage}`: WORLD_SIZE={} asks for data-parallel training, which runs one process per \
             CUDA GPU; on the CPU run one process (unset WORLD_SIZE / SLURM_NTASKS)",
            world.size
        );
    }
    Ok(())
}

/// The device of this rank: the stage's device for one process; `cuda:LOCAL_RANK` for
/// several (one process per GPU).
fn rank_device(cx: &StageContext, world: World) -> anyhow::Result<(candle_core::Device, String)> {
    if world.size == 1 {
        return Ok((cx.device.device()?, cx.device.describe()));
    }
    check_world(&cx.name, cx.device, world)?;
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
