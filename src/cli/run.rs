//! `relay run`, `relay plan` and `relay exec`: the local executor.

use super::args::{run_options, ExecArgs, ExecutorKind, PlanArgs, RunArgs, SelectArgs};
use super::{load_plan, print, BadInput};
use crate::device::DeviceSpec;
use crate::exec::{run_blocking, Status};

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
    let mut opts = run_options(&a.select, a.dry_run, a.device, a.jobs, a.keep_going, None);
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

/// `relay plan`: what would run, and why.
pub fn plan(a: PlanArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let opts = run_options(&a.select, true, DeviceSpec::Auto, None, false, None);
    let report = run_blocking(plan, opts)?;
    print::plan(&report);
    Ok(0)
}

/// `relay exec`: one stage (or one shard of it) on present inputs; a data-parallel rank
/// other than 0 follows rank 0.
pub fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    let world = crate::train::World::from_env()?;
    if world.rank > 0 {
        crate::exec::follow::run(&plan, &a.stage, a.device, world.rank)?;
        return Ok(0);
    }
    let select = SelectArgs {
        only: vec![a.stage.clone()],
        from: None,
        until: None,
        force: vec![],
    };
    let opts = run_options(&select, false, a.device, Some(1), false, a.shard);
    let report = run_blocking(plan, opts)?;
    print::summary(&report);
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
    Ok(print::exit_code(&report))
}
