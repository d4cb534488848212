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
