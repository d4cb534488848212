//! A sharded stage fanned out over the devices the executor handed it: one worker process
//! per device (`relay worker JOB`, hidden), all writing into the stage's one private
//! folder, then the parent merges.
//!
//! 1. [`run_workers`] (the parent, holding the stage's lock) writes one [`WorkerJob`] per
//!    device under `.relay/tmp/<stage>/workers/` and starts the workers, their output in
//!    `.relay/logs/<stage>.<device>.log`. It shows their progress (shards done on disk),
//!    kills them on Ctrl-C, and waits for all of them.
//! 2. Each worker ([`run_worker`]) runs the kind with [`StageContext::worker`] set: it walks
//!    the shards in order and takes each one no process holds ([`StageContext::try_lock_shard`])
//!    and that is not done — a worker that frees up takes the next missing shard, so a
//!    slow device makes fewer (work stealing by shard, not a fixed split). It writes a
//!    [`WorkerDone`] note when it ends, and stops between shards if its parent died.
//! 3. A worker that crashed (kill -9) leaves its shard unfinished, and the shard's lock
//!    free: the parent makes the missing shards itself after the workers end, then merges.
//!
//! Shards are committed atomically and keyed by seed, so which worker made which shard
//! never changes a byte of an image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::context::{LogFile, Progress, Reporter};
use super::{Cancelled, Input, Params, StageContext};
use crate::base::cancel::Cancel;
use crate::device::DeviceToken;

/// This process is worker `index` of a fan-out, on device `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRole {
    pub index: usize,
    /// The device's name (`cuda:1`, `cpu#2`): what the manifest's `worker` column says.
    pub name: String,
    /// The parent's pid: a worker whose parent died stops between shards.
    pub parent_pid: u32,
}

/// Everything a worker process needs to run the stage's kind on its device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    pub stage: String,
    pub kind: String,
    pub params: Params,
    pub out: PathBuf,
    pub inputs: Vec<Input>,
    pub workdir: PathBuf,
    pub pipeline_dir: PathBuf,
    pub project_root: PathBuf,
    pub fingerprint: String,
    pub device: DeviceToken,
    pub threads: usize,
    pub role: WorkerRole,
    /// Where the worker writes its [`WorkerDone`] note.
    pub done: PathBuf,
}

/// What a worker did, written when it ends normally.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerDone {
    pub shards: usize,
    pub images: u64,
    pub seconds: f64,
}

/// How one worker of a fan-out ended.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerEnd {
    pub device: String,
    pub pid: u32,
    /// `None`: it crashed or was killed (no note).
    pub done: Option<WorkerDone>,
    /// Its exit status in words (`exit 0`, `signal 6`).
    pub exit: String,
}

/// Start one worker per device of `cx` (at most `shards`, the shards left to make) and
/// wait for all of them (see the module doc). `done_images` counts the images of the
/// shards complete on disk (the progress bar).
pub fn run_workers(
    cx: &StageContext,
    shards: usize,
    done_images: &dyn Fn() -> u64,
) -> anyhow::Result<Vec<WorkerEnd>> {
    let exe = match &cx.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("cannot find the relay binary to start workers")?,
    };
    let dir = cx
        .workdir
        .join(".relay")
        .join("tmp")
        .join(&cx.name)
        .join("workers");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", crate::util::display_path(&dir)))?;
    let logs = cx.workdir.join(".relay").join("logs");
    std::fs::create_dir_all(&logs)?;
    let cpus = cx
        .devices
        .iter()
        .take(shards.max(1))
        .filter(|d| !d.spec.is_accelerator())
        .count();
    let mut children: Vec<(Child, WorkerJob)> = Vec::new();
    let started = (|| -> anyhow::Result<()> {
        for (index, device) in cx.devices.iter().take(shards.max(1)).enumerate() {
            let job = WorkerJob {
                stage: cx.name.clone(),
                kind: cx.kind.clone(),
                params: cx.params.clone(),
                out: cx.out.clone(),
                inputs: cx.inputs.clone(),
                workdir: cx.workdir.clone(),
                pipeline_dir: cx.pipeline_dir.clone(),
                project_root: cx.project_root.clone(),
                fingerprint: cx.fingerprint.clone(),
                device: device.clone(),
                // CPU workers share the cores.
                threads: if device.spec.is_accelerator() {
                    cx.threads
                } else {
                    (cx.threads / cpus.max(1)).max(1)
                },
                role: WorkerRole {
                    index,
                    name: device.name.clone(),
                    parent_pid: std::process::id(),
                },
                done: dir.join(format!("{index}.done.json")),
            };
            // YAML, not JSON: parameters such as `s_tmax: .inf` must reach the worker as
            // they are (JSON has no infinity).
            let path = dir.join(format!("{index}.job.yaml"));
            crate::util::write_atomic(&path, serde_yaml::to_string(&job)?.as_bytes())?;
            let log_path = logs.join(format!("{}.{}.log", cx.name, file_safe(&device.name)));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .arg(&path)
                .env("RELAY_WORKER_INDEX", index.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if !device.spec.is_accelerator() {
                cmd.env("RAYON_NUM_THREADS", job.threads.to_string());
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start a worker ({})", exe.display()))?;
            cx.progress.log(format!(
                "worker {} (pid {}) started; its log: {}",
                device.name,
                child.id(),
                crate::util::display_path(&log_path)
            ));
            children.push((child, job));
        }
        Ok(())
    })();
    if let Err(e) = started {
        kill_all(&mut children);
        return Err(e);
    }
    let ends = watch(cx, children, done_images)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ends)
}

/// Wait for every worker, updating the progress bar; Ctrl-C kills them.
fn watch(
    cx: &StageContext,
    mut children: Vec<(Child, WorkerJob)>,
    done_images: &dyn Fn() -> u64,
) -> anyhow::Result<Vec<WorkerEnd>> {
    let mut exits: Vec<Option<String>> = vec![None; children.len()];
    let mut cancelled = false;
    while exits.iter().any(Option::is_none) {
        for (i, (child, job)) in children.iter_mut().enumerate() {
            if exits[i].is_some() {
                continue;
            }
            let exit = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(s)) => describe_exit(s),
                Err(e) => format!("lost ({e})"),
            };
            if exit != "exit 0" && !cancelled {
                cx.progress.log(format!(
                    "worker {} (pid {}) ended with {exit}; the shard it was making is made again",
                    job.role.name,
                    child.id()
                ));
            }
            exits[i] = Some(exit);
        }
        cx.progress.set_position(done_images());
        if cx.cancel.is_cancelled() && !cancelled {
            cancelled = true;
            for (i, (child, _)) in children.iter_mut().enumerate() {
                if exits[i].is_none() {
                    let _ = child.kill();
                }
            }
        }
        if exits.iter().any(Option::is_none) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if cancelled {
        return Err(Cancelled.into());
    }
    Ok(children
        .into_iter()
        .zip(exits)
        .map(|((child, job), exit)| WorkerEnd {
            device: job.role.name.clone(),
            pid: child.id(),
            done: std::fs::read(&job.done)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            exit: exit.unwrap_or_else(|| "lost".into()),
        })
        .collect())
}

fn kill_all(children: &mut [(Child, WorkerJob)]) {
    for (c, _) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".into(),
    }
}

/// A device name as part of a file name (`cuda:1` -> `cuda1`, `cpu#2` -> `cpu2`).
fn file_safe(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// Log lines of a worker go to its stderr (the parent made that its log file).
struct Lines;

impl Reporter for Lines {
    fn start(&self, _len: Option<u64>, _unit: &str) {}
    fn inc(&self, _n: u64) {}
    fn set_position(&self, _pos: u64) {}
    fn message(&self, _msg: String) {}
    fn log(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// `relay worker JOB`: run one worker of a fan-out (started by [`run_workers`] only).
pub fn run_worker(job_path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(job_path)
        .with_context(|| format!("cannot read the worker job {}", job_path.display()))?;
    let job: WorkerJob = serde_yaml::from_slice(&bytes)
        .with_context(|| format!("{} is not a worker job", job_path.display()))?;
    let kind = super::find_kind(&job.kind)
        .with_context(|| format!("worker job names an unknown kind `{}`", job.kind))?;
    let t0 = Instant::now();
    let cx = StageContext {
        name: job.stage.clone(),
        kind: job.kind.clone(),
        params: job.params.clone(),
        out: job.out.clone(),
        inputs: job.inputs.clone(),
        workdir: job.workdir.clone(),
        pipeline_dir: job.pipeline_dir.clone(),
        project_root: job.project_root.clone(),
        fingerprint: job.fingerprint.clone(),
        device: job.device.spec,
        devices: vec![job.device.clone()],
        exe: None,
        worker: Some(job.role.clone()),
        threads: job.threads,
        shard: None,
        world: Default::default(),
        cancel: Cancel::new(),
        progress: Progress::new(std::sync::Arc::new(Lines)),
        log: LogFile::none(),
    };
    eprintln!(
        "worker {} of stage `{}` (pid {})",
        job.role.name,
        job.stage,
        std::process::id()
    );
    let outcome = kind.run(&cx)?;
    let done = WorkerDone {
        shards: outcome
            .info
            .get("worker_shards")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize,
        images: outcome.images.unwrap_or(0),
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::util::write_atomic(&job.done, &serde_json::to_vec(&done)?)?;
    Ok(())
}

impl WorkerRole {
    /// Whether the parent that started this worker is gone (the worker then stops).
    pub fn orphaned(&self) -> bool {
        std::os::unix::process::parent_id() != self.parent_pid
    }

    /// Test-only: `RELAY_TEST_SLOW_WORKER=I:MS[,J:MS...]` makes worker I sleep MS
    /// milliseconds before each shard (the fan-out tests show that a slow device takes
    /// fewer shards, and give a crashing worker its shards).
    pub fn test_delay(&self) {
        let Ok(v) = std::env::var("RELAY_TEST_SLOW_WORKER") else {
            return;
        };
        for part in v.split(',') {
            if let Some((i, ms)) = part.split_once(':') {
                if i.trim().parse() == Ok(self.index) {
                    if let Ok(ms) = ms.trim().parse::<u64>() {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker gets its parameters bit for bit, infinities included.
    #[test]
    fn a_worker_job_round_trips_its_parameters() {
        let params: Params =
            serde_yaml::from_str("seeds: 0-47\nstages: { base: { s_tmax: .inf, s_churn: 0.5 } }")
                .unwrap();
        let job = WorkerJob {
            stage: "samples".into(),
            kind: "sample".into(),
            params: params.clone(),
            out: "/w/.relay/partial/samples.0123".into(),
            inputs: vec![],
            workdir: "/w".into(),
            pipeline_dir: "/p".into(),
            project_root: "/p".into(),
            fingerprint: "ab".repeat(32),
            device: DeviceToken::cpu(1),
            threads: 2,
            role: WorkerRole {
                index: 1,
                name: "cpu#1".into(),
                parent_pid: 7,
            },
            done: "/w/1.done.json".into(),
        };
        let back: WorkerJob = serde_yaml::from_str(&serde_yaml::to_string(&job).unwrap()).unwrap();
        assert_eq!(back.params, params);
        assert_eq!(back.device, job.device);
        assert_eq!(back.role.name, "cpu#1");
    }
}
