//! The tables the CLI prints: the plan, a run's summary (and where its results are), and
//! `relay status`.

use crate::exec::{RunReport, Status};
use crate::plan::Plan;

pub fn exit_code(r: &RunReport) -> i32 {
    if r.failed() {
        1
    } else if r.cancelled {
        130
    } else {
        0
    }
}

/// The width of the stage column: the longest name, at least 5 (`stage`).
pub fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(5).max(5)
}

pub fn plan(r: &RunReport) {
    let w = name_width(r.stages.iter().map(|s| s.name.as_str()));
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
fn results(r: &RunReport) {
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

pub fn summary(r: &RunReport) {
    let w = name_width(r.stages.iter().map(|s| s.name.as_str()));
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
    results(r);
    let failed = r
        .stages
        .iter()
        .filter(|s| matches!(s.status, Status::Failed(_)))
        .count();
    if failed > 0 {
        println!("{failed} stage(s) failed; their logs are in .relay/logs/ under the workdir");
    }
}

pub fn status(plan: &Plan) {
    let records = crate::base::record::read_all(&plan.spec.workdir);
    let jobs = crate::exec::slurm::JobsFile::load(&plan.spec.workdir);
    let w = name_width(plan.nodes.iter().map(|n| n.name.as_str()));
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
                    super::slurm::summarize_states(&states)
                };
                println!(
                    "{:<w$}    slurm job {} ({}) submitted {}: {}",
                    "", j.id, j.role, j.submitted, states
                );
            }
        }
    }
}
