//! `relay run --executor slurm` (submit what must run as sbatch jobs, optionally wait) and
//! `relay cancel` (scancel what is still queued or running).

use super::args::{run_options, PipelineArgs, RunArgs};
use super::{load_plan, print};
use crate::exec::run_blocking;
use crate::plan::Plan;

/// `relay cancel`.
pub fn cancel(a: &PipelineArgs) -> anyhow::Result<i32> {
    let plan = load_plan(a)?;
    crate::exec::slurm::require_slurm()?;
    let ids = crate::exec::slurm::cancel_all(&plan.spec.workdir)?;
    if ids.is_empty() {
        println!("no queued or running Slurm jobs for this pipeline");
    } else {
        println!("cancelled {} job(s): {}", ids.len(), ids.join(" "));
    }
    Ok(0)
}

/// `relay run --executor slurm`: submit what must run as sbatch jobs.
pub fn run(plan: Plan, a: &RunArgs) -> anyhow::Result<i32> {
    use crate::exec::slurm::{self, Invocation, SlurmPlan};
    if !a.dry_run {
        slurm::require_slurm()?;
    }
    let opts = run_options(&a.select, true, a.device, a.jobs, false, None);
    let report = run_blocking(plan.clone(), opts)?;
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
        print::plan(&report);
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
    let w = print::name_width(submitted.iter().map(|s| s.0.as_str()));
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
pub fn summarize_states(states: &[String]) -> String {
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
