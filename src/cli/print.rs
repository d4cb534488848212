//! The tables the CLI prints: the plan, a run's summary (and where its results are), and
//! `relay status`.

use crate::exec::{RunReport, Status};
use crate::plan::Plan;

pub fn exit_code(r: &RunReport) -> i32 {
    if r.failed() {
        1
    } else if r.busy() {
        2
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
        let detail = if s.devices.is_empty() {
            detail
        } else {
            format!("[holds {}] {detail}", s.devices.join(", "))
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
    // With devices handed out (`--devices`): which stage held which, and the cost.
    let devices = r.stages.iter().any(|s| !s.devices.is_empty());
    if devices {
        let dw = r
            .stages
            .iter()
            .map(|s| s.devices.join(",").len())
            .max()
            .unwrap_or(0)
            .max(7);
        println!(
            "{:<w$}  {:<10} {:>9} {:>12}  {:<dw$}  output",
            "stage", "status", "seconds", "device-hours", "devices"
        );
        for s in &r.stages {
            println!(
                "{:<w$}  {:<10} {:>9.1} {:>12.4}  {:<dw$}  {}",
                s.name,
                s.status.word(),
                s.seconds,
                s.seconds * s.devices.len() as f64 / 3600.0,
                s.devices.join(","),
                output_cell(s)
            );
        }
    } else {
        println!("{:<w$}  {:<10} {:>9}  output", "stage", "status", "seconds");
    }
    for s in r.stages.iter().filter(|_| !devices) {
        println!(
            "{:<w$}  {:<10} {:>9.1}  {}",
            s.name,
            s.status.word(),
            s.seconds,
            output_cell(s)
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

/// A stage's output folder, or why it has none.
fn output_cell(s: &crate::exec::StageReport) -> String {
    s.output
        .as_ref()
        .map(|p| crate::util::display_path(p))
        .unwrap_or_else(|| match &s.status {
            Status::Skipped(why) | Status::Blocked(why) | Status::Busy(why) => {
                format!("({why})")
            }
            _ => String::new(),
        })
}

pub fn status(plan: &Plan) {
    let records = crate::base::record::read_all(&plan.spec.workdir);
    let jobs = crate::exec::slurm::JobsFile::load(&plan.spec.workdir);
    let w = name_width(plan.nodes.iter().map(|n| n.name.as_str()));
    let last = |name: &str| records.iter().rev().find(|r| r.stage == name);
    let devices_of = |r: &crate::base::record::Record| {
        if r.devices.is_empty() {
            r.device.clone()
        } else {
            r.devices.join(",")
        }
    };
    let dw = plan
        .nodes
        .iter()
        .filter_map(|n| last(&n.name).map(|r| devices_of(r).len()))
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<w$}  {:<10} {:<21} {:>9} {:>12}  {:<dw$}  output",
        "stage", "last run", "ended (UTC)", "seconds", "device-hours", "devices"
    );
    for &i in &plan.order {
        let name = &plan.nodes[i].name;
        match last(name) {
            Some(r) => println!(
                "{:<w$}  {:<10} {:<21} {:>9.1} {:>12.4}  {:<dw$}  {}",
                name,
                r.status,
                r.ended,
                r.seconds,
                r.device_hours,
                devices_of(r),
                r.output
                    .as_ref()
                    .map(|o| crate::util::display_path(&o.dir))
                    .unwrap_or_default()
            ),
            None => println!("{:<w$}  {:<10}", name, "never"),
        }
        // Per-device time of a fanned-out stage (its workers).
        if let Some(serde_json::Value::Array(ws)) = last(name).and_then(|r| r.info.get("workers")) {
            for wk in ws {
                let d = &wk["done"];
                println!(
                    "{:<w$}    worker {}: {} shards, {:.1} s ({})",
                    "",
                    wk["device"].as_str().unwrap_or("?"),
                    d["shards"].as_u64().unwrap_or(0),
                    d["seconds"].as_f64().unwrap_or(0.0),
                    wk["exit"].as_str().unwrap_or("?")
                );
            }
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

/// Human size of a byte count.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// One kept folder in words.
fn kept_line(k: &crate::exec::gc::Kept) -> String {
    let what = match (k.what, &k.fingerprint) {
        ("partial", Some(fp)) if k.current => {
            format!("interrupted run of the current fingerprint {fp} (a rerun resumes it)")
        }
        ("partial", Some(fp)) => format!("interrupted run of another fingerprint {fp}"),
        (w, _) => format!("{w} leftovers of a dead run"),
    };
    format!(
        "{}: {what}, {} files, {} — {}",
        k.stage,
        k.files,
        size(k.bytes),
        crate::util::display_path(&k.path)
    )
}

/// `relay status`'s list of kept interrupted work.
pub fn kept(kept: &[crate::exec::gc::Kept]) {
    if kept.is_empty() {
        return;
    }
    println!("\nkept work (`relay gc` removes what no rerun resumes):");
    for k in kept {
        println!("  {}", kept_line(k));
    }
}

/// What `relay gc` removed.
pub fn collected(done: &[crate::exec::gc::Collected], dry_run: bool) {
    use crate::exec::gc::Collected;
    let mut freed = 0;
    for c in done {
        match c {
            Collected::Removed(k) => {
                freed += k.bytes;
                println!(
                    "{} {}",
                    if dry_run { "would remove" } else { "removed" },
                    kept_line(k)
                );
            }
            Collected::Busy(k) => println!(
                "left {} (another process runs stage `{}`)",
                crate::util::display_path(&k.path),
                k.stage
            ),
        }
    }
    if done.is_empty() {
        println!("nothing to remove");
    } else {
        println!(
            "{} {}",
            if dry_run { "would free" } else { "freed" },
            size(freed)
        );
    }
}
