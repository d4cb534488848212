//! The Slurm executor: every stage that must run becomes an `sbatch` job that runs
//! `relay exec PIPELINE STAGE` on a node, chained with `--dependency=afterok:`; a sharded
//! stage (sampling) becomes a job array over its missing shards (`--shard $I/N` per task)
//! plus a merge job. Relay drives Slurm; it adds no protocol of its own.
//!
//! 1. [`SlurmPlan::new`] takes the stages a dry run says must run.
//! 2. [`SlurmPlan::scripts`] writes one batch script per job under
//!    `workdir/.relay/slurm/<stage>/` (the job logs land beside them), so a user can read
//!    and resubmit them by hand.
//! 3. [`SlurmPlan::submit`] calls `sbatch --parsable` in dependency order and records the
//!    job ids in `workdir/.relay/slurm/jobs.json` (for `relay status` and `relay cancel`).
//!    A stage whose earlier job is still queued or running is not submitted again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::RunReport;
use crate::plan::Plan;
use crate::spec::wire::ResourcesWire;

/// How the worker invokes relay: the same pipeline, overrides and workdir as the submitter.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The relay binary (absolute).
    pub exe: PathBuf,
    /// The pipeline file (absolute).
    pub pipeline: PathBuf,
    /// `-s` overrides as given.
    pub overrides: Vec<String>,
    /// `--var` overrides as given.
    pub vars: Vec<String>,
    /// The workdir (absolute).
    pub workdir: PathBuf,
    /// The submitting folder (`--chdir`).
    pub cwd: PathBuf,
}

/// One job to submit.
#[derive(Debug, Clone)]
pub struct Job {
    pub stage: String,
    /// `single`, `array` or `merge`.
    pub role: &'static str,
    pub script: PathBuf,
    pub text: String,
    /// Stages whose jobs this one waits for.
    pub after: Vec<String>,
}

/// Recorded submissions (`jobs.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobsFile {
    /// stage -> its jobs (ids and roles), newest submission only.
    pub stages: BTreeMap<String, Vec<JobRecord>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub role: String,
    pub script: PathBuf,
    pub submitted: String,
}

pub fn slurm_dir(workdir: &Path) -> PathBuf {
    workdir.join(".relay").join("slurm")
}

impl JobsFile {
    pub fn load(workdir: &Path) -> Self {
        std::fs::read_to_string(slurm_dir(workdir).join("jobs.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }
    pub fn save(&self, workdir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::util::write_atomic(&slurm_dir(workdir).join("jobs.json"), text.as_bytes())?;
        Ok(())
    }
}

/// Fail with a clear message when Slurm is not installed here.
pub fn require_slurm() -> anyhow::Result<()> {
    for tool in ["sbatch", "squeue", "scontrol"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!(
                "`--executor slurm` needs Slurm's `{tool}` on PATH, and it is not there; run on a Slurm login node, \
                 or use the local executor (the default), or `--dry-run` to see the batch scripts"
            );
        }
    }
    Ok(())
}

/// `MaxArraySize` of the cluster (array task ids must be below it); 1001 if unknown.
pub fn max_array_size() -> usize {
    Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.trim_start().starts_with("MaxArraySize"))
                .and_then(|l| l.split('=').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(1001)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `#SBATCH` lines for a stage's resources.
fn sbatch_lines(r: &ResourcesWire, job_name: &str, log: &str, array: Option<&str>) -> Vec<String> {
    let mut l = vec![
        format!("#SBATCH --job-name={job_name}"),
        format!("#SBATCH --output={log}"),
    ];
    if let Some(a) = array {
        l.push(format!("#SBATCH --array={a}"));
    }
    let gpus = r.gpus.unwrap_or(0);
    let nodes = r.nodes.unwrap_or(1);
    if nodes > 1 {
        l.push(format!("#SBATCH --nodes={nodes}"));
    }
    if gpus > 0 {
        // One task per GPU; the training stage takes its rank from SLURM_PROCID.
        l.push(format!("#SBATCH --ntasks-per-node={gpus}"));
        l.push(format!("#SBATCH --gpus-per-node={gpus}"));
    }
    if let Some(c) = r.cpus {
        l.push(format!("#SBATCH --cpus-per-task={c}"));
    }
    for (flag, v) in [
        ("mem", &r.mem),
        ("time", &r.time),
        ("partition", &r.partition),
        ("account", &r.account),
        ("qos", &r.qos),
        ("constraint", &r.constraint),
    ] {
        if let Some(v) = v {
            l.push(format!("#SBATCH --{flag}={v}"));
        }
    }
    l
}

/// The `relay exec` command line of a worker.
fn exec_line(inv: &Invocation, stage: &str, shard: Option<&str>) -> String {
    let mut parts = vec![
        quote(&inv.exe.to_string_lossy()),
        "exec".into(),
        quote(&inv.pipeline.to_string_lossy()),
        quote(stage),
        "--workdir".into(),
        quote(&inv.workdir.to_string_lossy()),
    ];
    for o in &inv.overrides {
        parts.push("-s".into());
        parts.push(quote(o));
    }
    for v in &inv.vars {
        parts.push("--var".into());
        parts.push(quote(v));
    }
    if let Some(s) = shard {
        parts.push("--shard".into());
        parts.push(s.to_string());
    }
    parts.join(" ")
}

/// The jobs of one submission.
pub struct SlurmPlan {
    pub jobs: Vec<Job>,
}

impl SlurmPlan {
    /// Jobs for every stage the dry run says must run, in dependency order.
    pub fn new(
        plan: &Plan,
        report: &RunReport,
        inv: &Invocation,
        max_array: usize,
    ) -> anyhow::Result<Self> {
        let workdir = &plan.spec.workdir;
        let mut jobs = Vec::new();
        let runs: Vec<&str> = report
            .stages
            .iter()
            .filter(|s| matches!(s.status, super::Status::WouldRun(_)))
            .map(|s| s.name.as_str())
            .collect();
        for &i in &plan.order {
            let node = &plan.nodes[i];
            if !runs.contains(&node.name.as_str()) {
                continue;
            }
            let after: Vec<String> = node
                .needs
                .iter()
                .map(|&d| plan.nodes[d].name.clone())
                .filter(|n| runs.contains(&n.as_str()))
                .collect();
            let dir = slurm_dir(workdir).join(&node.name);
            let job_name = format!("relay-{}-{}", plan.spec.name, node.name);
            let r = &node.resources;
            let header = |r: &ResourcesWire, log: &str, array: Option<&str>| {
                let mut t = String::from("#!/bin/bash\n");
                t += &format!(
                    "# relay: stage `{}` of pipeline `{}` ({})\n",
                    node.name,
                    plan.spec.name,
                    node.kind.name()
                );
                for l in sbatch_lines(r, &job_name, &dir.join(log).to_string_lossy(), array) {
                    t += &l;
                    t.push('\n');
                }
                t += &format!("#SBATCH --chdir={}\n", inv.cwd.display());
                t += "set -euo pipefail\n";
                t
            };
            let shards = {
                let report_fp = report
                    .stages
                    .iter()
                    .find(|s| s.name == node.name)
                    .and_then(|s| s.fingerprint.clone());
                // The private folder of this fingerprint holds the shards done so far; when an
                // input will rerun first, the fingerprint is not known yet and every shard runs.
                let out = report_fp.map(|fp| {
                    workdir.join(".relay").join("partial").join(format!(
                        "{}.{}",
                        node.name,
                        &fp[..16]
                    ))
                });
                node.kind.shards(
                    &node.params,
                    out.as_deref().unwrap_or(Path::new("/nonexistent")),
                )
            };
            match shards {
                Some((total, missing)) if total > 0 => {
                    let cap = r
                        .array_parallel
                        .map(|p| format!("%{p}"))
                        .unwrap_or_default();
                    // Task ids must stay below MaxArraySize: chunk with an offset.
                    let chunk = max_array.max(1);
                    let mut first = 0;
                    let mut part = 0;
                    while first < missing.len() {
                        let offset = missing[first] / chunk * chunk;
                        let ids: Vec<usize> = missing[first..]
                            .iter()
                            .take_while(|&&m| m - offset < chunk)
                            .map(|&m| m - offset)
                            .collect();
                        first += ids.len();
                        let list = compress_ranges(&ids);
                        let mut t = header(r, "%x-%A_%a.out", Some(&format!("{list}{cap}")));
                        t += &format!("I=$(( {offset} + SLURM_ARRAY_TASK_ID ))\n");
                        t += &format!(
                            "exec {}\n",
                            exec_line(inv, &node.name, Some(&format!("$I/{total}")))
                        );
                        jobs.push(Job {
                            stage: node.name.clone(),
                            role: "array",
                            script: dir.join(format!("shards-{part}.sbatch")),
                            text: t,
                            after: after.clone(),
                        });
                        part += 1;
                    }
                    // The merge only reads shards and writes the manifest: no GPU.
                    let merge_res = ResourcesWire {
                        gpus: None,
                        nodes: None,
                        ..r.clone()
                    };
                    let mut t = header(&merge_res, "%x-merge-%j.out", None);
                    t += &format!("exec {}\n", exec_line(inv, &node.name, None));
                    jobs.push(Job {
                        stage: node.name.clone(),
                        role: "merge",
                        script: dir.join("merge.sbatch"),
                        text: t,
                        after: after.clone(),
                    });
                }
                _ => {
                    let mut t = header(r, "%x-%j.out", None);
                    let gpus = r.gpus.unwrap_or(0);
                    if gpus > 1 || r.nodes.unwrap_or(1) > 1 {
                        // One process per GPU: rank SLURM_PROCID of SLURM_NTASKS, local rank
                        // SLURM_LOCALID; the first node is the rendezvous.
                        t += "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n";
                        t += "export MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))\n";
                        t += &format!(
                            "srun --kill-on-bad-exit=1 {}\n",
                            exec_line(inv, &node.name, None)
                        );
                    } else {
                        t += &format!("exec {}\n", exec_line(inv, &node.name, None));
                    }
                    jobs.push(Job {
                        stage: node.name.clone(),
                        role: "single",
                        script: dir.join("job.sbatch"),
                        text: t,
                        after,
                    });
                }
            }
        }
        Ok(Self { jobs })
    }

    /// Write every script (they stay beside the logs for reading and resubmitting).
    pub fn write_scripts(&self) -> anyhow::Result<()> {
        for j in &self.jobs {
            if let Some(d) = j.script.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&j.script, &j.text)
                .with_context(|| format!("writing {}", j.script.display()))?;
        }
        Ok(())
    }

    /// Submit in order; returns (stage, role, job id) per job.
    pub fn submit(&self, workdir: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
        let mut jobs_file = JobsFile::load(workdir);
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut out = Vec::new();
        let mut fresh_stages: Vec<String> = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        for j in &self.jobs {
            if kept.contains(&j.stage) {
                continue;
            }
            // An earlier submission of this stage still queued or running: keep it.
            if !fresh_stages.contains(&j.stage) {
                if let Some(prev) = jobs_file.stages.get(&j.stage) {
                    let live: Vec<String> = prev
                        .iter()
                        .filter(|r| is_live(&r.id))
                        .map(|r| r.id.clone())
                        .collect();
                    if !live.is_empty() {
                        ids.insert(j.stage.clone(), live.clone());
                        kept.push(j.stage.clone());
                        for id in live {
                            out.push((j.stage.clone(), "queued earlier".into(), id));
                        }
                        continue;
                    }
                }
                fresh_stages.push(j.stage.clone());
                jobs_file.stages.insert(j.stage.clone(), Vec::new());
            }
            let mut deps: Vec<String> = j
                .after
                .iter()
                .flat_map(|s| ids.get(s).cloned().unwrap_or_default())
                .collect();
            if j.role == "merge" {
                deps.extend(ids.get(&j.stage).cloned().unwrap_or_default());
            }
            let mut cmd = Command::new("sbatch");
            cmd.arg("--parsable");
            if !deps.is_empty() {
                cmd.arg(format!("--dependency=afterok:{}", deps.join(":")));
                cmd.arg("--kill-on-invalid-dep=yes");
            }
            cmd.arg(&j.script);
            let o = cmd.output().context("running sbatch")?;
            if !o.status.success() {
                bail!(
                    "sbatch refused the job of stage `{}` ({}): {}",
                    j.stage,
                    j.script.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            let id = String::from_utf8_lossy(&o.stdout)
                .trim()
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            ids.entry(j.stage.clone()).or_default().push(id.clone());
            jobs_file
                .stages
                .entry(j.stage.clone())
                .or_default()
                .push(JobRecord {
                    id: id.clone(),
                    role: j.role.into(),
                    script: j.script.clone(),
                    submitted: crate::base::record::rfc3339(std::time::SystemTime::now()),
                });
            jobs_file.save(workdir)?;
            out.push((j.stage.clone(), j.role.to_string(), id));
        }
        Ok(out)
    }
}

/// `0-3,5,7-8` for sorted ids.
fn compress_ranges(ids: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The state of a job (or of every task of an array job): `PENDING`, `RUNNING`,
/// `COMPLETED`, `FAILED`, `CANCELLED`, ... from `squeue`, else `scontrol show job`.
pub fn job_states(id: &str) -> Vec<String> {
    let q = Command::new("squeue")
        .args(["-h", "-j", id, "-o", "%T"])
        .output();
    if let Ok(o) = q {
        let states: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if !states.is_empty() {
            return states;
        }
    }
    let o = Command::new("scontrol").args(["show", "job", id]).output();
    match o {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("JobState="))
            .map(str::to_string)
            .collect(),
        Err(_) => vec![],
    }
}

/// Whether a job is still queued or running. A job pending on a dependency that failed
/// (`DependencyNeverSatisfied`) will never run: it does not count.
pub fn is_live(id: &str) -> bool {
    let doomed = Command::new("squeue")
        .args(["-h", "-j", id, "-o", "%r"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("DependencyNeverSatisfied"))
        .unwrap_or(false);
    if doomed {
        let _ = Command::new("scancel").arg(id).output();
        return false;
    }
    job_states(id).iter().any(|s| {
        matches!(
            s.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED" | "SUSPENDED"
        )
    })
}

/// Wait until none of `ids` is queued or running (polling squeue).
pub fn wait(ids: &[String], cancel: &crate::base::cancel::Cancel) -> anyhow::Result<()> {
    loop {
        if cancel.is_cancelled() {
            bail!("stopped waiting (the jobs keep running; `relay cancel` stops them)");
        }
        if !ids.iter().any(|i| is_live(i)) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// scancel every live job of the pipeline; returns the ids cancelled.
pub fn cancel_all(workdir: &Path) -> anyhow::Result<Vec<String>> {
    let jobs = JobsFile::load(workdir);
    let live: Vec<String> = jobs
        .stages
        .values()
        .flatten()
        .map(|r| r.id.clone())
        .filter(|i| is_live(i))
        .collect();
    if !live.is_empty() {
        let o = Command::new("scancel")
            .args(&live)
            .output()
            .context("running scancel")?;
        if !o.status.success() {
            bail!(
                "scancel failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(compress_ranges(&[0, 1, 2, 3]), "0-3");
        assert_eq!(compress_ranges(&[1, 3, 4, 7]), "1,3-4,7");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
