//! `relay run`, `relay plan` and `relay exec`: the local executor.

use super::args::{
    run_options, ExecArgs, ExecutorKind, GcArgs, PipelineArgs, PlanArgs, RunArgs, SelectArgs,
};
use super::{load_plan, print, BadInput};
use crate::device::DeviceSpec;
use std::sync::Arc;

use crate::exec::{launch, run_blocking, Status};
use crate::plan::graph::Graph;
use crate::spec::SpecErrors;

/// `relay run`: every stage that is not up to date (or submit them to Slurm).
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let slurm = match a.executor {
        Some(e) => e == ExecutorKind::Slurm,
        None => plan.spec.executor.as_deref() == Some("slurm"),
    };
    if slurm {
        return super::slurm::run(plan, &a);
    }
    let (device, devices) = local_devices(a.device, a.devices.as_deref(), &plan)?;
    let mut opts = run_options(&a.select, a.dry_run, device, a.jobs, a.keep_going, None);
    opts.devices = devices;
    opts.lockfile = a.lockfile.clone();
    let dry = opts.dry_run;
    let report = run_blocking(plan, opts)?;
    if dry {
        print::plan(&report);
        return Ok(0);
    }
    print::summary(&report);
    Ok(print::exit_code(&report))
}

/// The device of GPU stages and the devices handed out (`--device`, `--devices`, the
/// pipeline's `devices:`), checked before anything runs: a device this machine lacks is
/// bad input (exit 2); `auto` on a `cuda` build without a GPU says so once, loudly.
fn local_devices(
    device: DeviceSpec,
    list: Option<&str>,
    plan: &crate::plan::Plan,
) -> anyhow::Result<(DeviceSpec, Vec<crate::device::DeviceToken>)> {
    let list = list.or(plan.spec.devices.as_deref());
    if list.is_some() && device != DeviceSpec::Auto {
        return Err(BadInput(format!(
            "--device {device} and a device list (`{}`) both say where GPU stages run: give one of them",
            list.unwrap_or_default()
        ))
        .into());
    }
    let devices = crate::device::run_devices(list, device).map_err(|e| BadInput(e.to_string()))?;
    let device = match devices.first() {
        Some(d) => d.spec,
        None => resolve_device(device)?,
    };
    Ok((device, devices))
}

/// `--device` as this machine can honour it: a missing GPU is bad input; `auto` on a
/// `cuda` build without one warns once.
fn resolve_device(device: DeviceSpec) -> anyhow::Result<DeviceSpec> {
    let (d, warning) = device.resolve().map_err(|e| BadInput(e.to_string()))?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    Ok(d)
}

/// `relay plan`: what would run, and why.
pub fn plan(a: PlanArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let (device, devices) = local_devices(DeviceSpec::Auto, a.devices.as_deref(), &plan)?;
    let mut opts = run_options(&a.select, true, device, None, false, None);
    opts.devices = devices;
    let report = run_blocking(plan, opts)?;
    print::plan(&report);
    Ok(0)
}

/// `relay exec`: one stage (or one shard of it) on present inputs; a data-parallel rank
/// other than 0 follows rank 0.
pub fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let world = crate::train::World::from_env()?;
    let device = if world.size > 1 {
        // A launched rank: its device is cuda:LOCAL_RANK (checked by the stage).
        a.device
    } else {
        resolve_device(a.device)?
    };
    if world.rank > 0 {
        crate::exec::follow::run(&plan, &a.stage, device, world)?;
        return Ok(0);
    }
    let select = SelectArgs {
        only: vec![a.stage.clone()],
        from: None,
        until: None,
        force: vec![],
    };
    let mut opts = run_options(&select, false, device, Some(1), false, a.shard);
    opts.world = world;
    let launch = if world.size > 1 {
        let (addr, port) = launch::address_from_env()?;
        Some(Arc::new(launch::Announcer::listen(world, &addr, port)?))
    } else {
        None
    };
    opts.launch = launch.clone();
    // What the stage needs (a stage after it, not selected, does not matter here).
    let target = plan.select(&a.stage).map_err(SpecErrors::from)?;
    if let Some(sh) = a.shard {
        if let Some(&i) = target.iter().find(|&&i| {
            let n = &plan.nodes[i];
            n.kind.shards(&n.params, std::path::Path::new("")).is_none()
        }) {
            let n = &plan.nodes[i];
            return Err(BadInput(format!(
                "`--shard {}/{}`: stage `{}` ({}) is not split into shards; only `sample` stages are. Run it without --shard, once",
                sh.index,
                sh.count,
                n.name,
                n.kind.name()
            ))
            .into());
        }
    }
    let deps = plan.deps();
    let upstream = Graph { deps: &deps }.upstream(&target);
    let needed: Vec<String> = (0..plan.nodes.len())
        .filter(|&i| upstream[i] && !target.contains(&i))
        .map(|i| plan.nodes[i].name.clone())
        .collect();
    let target_names: Vec<String> = target.iter().map(|&i| plan.nodes[i].name.clone()).collect();
    let a_stage = a.stage.clone();
    let report = run_blocking(plan, opts);
    if let Some(a) = &launch {
        // The stage did not start (or the run ended before saying so): tell the others.
        a.announce(match &report {
            Err(e) => launch::Verdict::Failed(format!("{e:#}")),
            Ok(r) => match r
                .stages
                .iter()
                .find(|s| target_names.contains(&s.name))
                .map(|s| &s.status)
            {
                Some(Status::Cached | Status::Unselected | Status::Done) => launch::Verdict::Cached,
                Some(other) => {
                    launch::Verdict::Failed(format!("stage `{}` is {}", a_stage, other.word()))
                }
                None => launch::Verdict::Failed("no such stage".into()),
            },
        });
        let heard = a.finish(std::time::Duration::from_secs(60));
        if heard + 1 < world.size {
            eprintln!(
                "warning: only {heard} of the {} other ranks heard from rank 0",
                world.size - 1
            );
        }
    }
    let report = report?;
    print::summary(&report);
    if let Some(s) = report
        .stages
        .iter()
        .find(|s| matches!(s.status, Status::Blocked(_)) && needed.contains(&s.name))
    {
        return Err(BadInput(format!(
            "stage `{}` is needed by `{}` but has no complete output; run it first (relay exec PIPELINE {}, or relay run PIPELINE --until {})",
            s.name, a.stage, s.name, s.name
        ))
        .into());
    }
    if let Some(s) = report
        .stages
        .iter()
        .find(|s| matches!(s.status, Status::Busy(_)))
    {
        let Status::Busy(why) = &s.status else {
            unreachable!()
        };
        return Err(BadInput(why.clone()).into());
    }
    Ok(print::exit_code(&report))
}

/// Every stage's current fingerprint (`None` where it cannot be known yet: an input has no
/// output), from a dry run.
fn current_fingerprints(plan: &crate::plan::Plan) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let select = SelectArgs {
        only: vec![],
        from: None,
        until: None,
        force: vec![],
    };
    let report = run_blocking(
        plan.clone(),
        run_options(&select, true, DeviceSpec::Auto, None, false, None),
    )?;
    Ok(report
        .stages
        .into_iter()
        .map(|s| (s.name, s.fingerprint))
        .collect())
}

/// `relay status`: the last run of each stage, Slurm jobs, and kept interrupted work.
pub fn status(a: &PipelineArgs) -> anyhow::Result<i32> {
    let plan = load_plan(a)?;
    print::status(&plan);
    let kept = crate::exec::gc::kept(&plan.spec.workdir, &current_fingerprints(&plan)?);
    print::kept(&kept);
    Ok(0)
}

/// `relay gc`: remove kept work that no rerun resumes from.
pub fn gc(a: &GcArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let stages = current_fingerprints(&plan)?;
    let done = crate::exec::gc::collect(&plan.spec.workdir, &stages, a.dry_run);
    print::collected(&done, a.dry_run);
    Ok(0)
}
