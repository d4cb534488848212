//! One stage run on its blocking thread: attempts (with `retries:`), the stage's log file,
//! its run record for every attempt, and the commit of a successful one ([`super::commit`]).
//! Never panics on stage errors; they become [`Status::Failed`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::commit;
use super::fresh::{self, State};
use super::launch::{Announcer, Verdict};
use super::progress::Ui;
use super::queue::Lease;
use super::report::Status;
use crate::base::cancel::{Cancel, Cancelled};
use crate::base::lock::Mode;
use crate::base::record::{self, FingerprintInputs, Record};
use crate::base::world::World;
use crate::device::{DeviceSpec, DeviceToken};
use crate::plan::Plan;
use crate::stage::context::LogFile;
use crate::stage::{Input, Progress, ShardSel, StageContext};

/// Sent by a finished stage to the drain loop.
pub struct Message {
    pub node: usize,
    pub status: Status,
    pub seconds: f64,
    pub state: Option<State>,
}

/// Everything a stage run needs, moved onto its blocking thread.
pub struct StageJob {
    pub plan: Arc<Plan>,
    pub node: usize,
    pub what: FingerprintInputs,
    pub fingerprint: String,
    pub inputs: Vec<Input>,
    pub device: DeviceSpec,
    /// The devices it holds (handed out by the drain loop; empty: it runs on `device`).
    pub devices: Vec<DeviceToken>,
    /// The relay binary its workers run.
    pub exe: Option<std::path::PathBuf>,
    pub shard: Option<ShardSel>,
    pub cancel: Cancel,
    pub ui: Ui,
    pub why: Vec<String>,
    /// `--force`: run even if another process committed the same fingerprint meanwhile.
    pub forced: bool,
    /// Its place among data-parallel ranks (`relay exec` under a launcher).
    pub world: World,
    /// Rank 0 of a data-parallel launch: says `run` to the others when the kind starts.
    pub launch: Option<Arc<Announcer>>,
    /// The job slot and devices it holds (given back by the drain loop when it ends).
    pub lease: Lease,
}

/// Node `d`'s published output as a downstream stage sees it.
pub fn published_input(plan: &Plan, workdir: &Path, d: usize, fingerprint: String) -> Input {
    let n = &plan.nodes[d];
    Input {
        name: n.name.clone(),
        kind: n.kind.name().to_string(),
        dir: fresh::output_dir(workdir, &n.name),
        params: n.params.clone(),
        fingerprint,
    }
}

/// Run one stage to its end: attempts, publishing, state and record. Never panics on
/// stage errors; they become `Status::Failed`.
pub fn run_stage(job: StageJob) -> Message {
    let node = &job.plan.nodes[job.node];
    let spec = &job.plan.spec;
    let workdir = &spec.workdir;
    let relay_dir = workdir.join(".relay");
    let log = LogFile::create(&relay_dir.join("logs").join(format!("{}.log", node.name)))
        .unwrap_or_else(|_| LogFile::none());
    let reporter = Arc::new(job.ui.stage(&node.name, log.clone()));
    let progress = Progress::new(reporter.clone());
    job.ui
        .println(&format!("[{}] starting: {}", node.name, job.why.join("; ")));
    let started_wall = SystemTime::now();
    let t0 = Instant::now();
    let finish = |status: Status, state: Option<State>| {
        reporter.finish();
        Message {
            node: job.node,
            status,
            seconds: t0.elapsed().as_secs_f64(),
            state,
        }
    };
    // 1. The stage's lock: this process alone commits it (`--shard` workers share it).
    let mode = if job.shard.is_some() {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let _lock = match commit::lock_stage(workdir, &node.name, mode) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("{e}");
            log.line(&format!("error: {msg}"));
            return finish(Status::Busy(msg), None);
        }
    };
    // 2. Another process may have committed it while this one decided or waited.
    if job.shard.is_none() {
        if let Err(e) = commit::recover(workdir, &node.name) {
            log.line(&format!(
                "warning: finishing an interrupted commit failed: {e:#}"
            ));
        }
        if !job.forced {
            if let Some(s) = fresh::read_state(workdir, &node.name) {
                if s.record.fingerprint == job.fingerprint
                    && fresh::check_intact(workdir, &node.name, &s).is_ok()
                {
                    log.line("=== committed meanwhile by another process: using its output");
                    return finish(Status::Cached, Some(s));
                }
            }
        }
    }
    let mut attempt = 0;
    let (status, state) = loop {
        attempt += 1;
        log.line(&format!(
            "=== {} attempt {attempt} fingerprint {} ({})",
            record::rfc3339(SystemTime::now()),
            job.fingerprint,
            job.why.join("; ")
        ));
        let resumable = node.kind.resumable();
        let out = commit::out_dir(workdir, &node.name, &job.fingerprint, resumable, attempt);
        let result = commit::prepare_out(workdir, &node.name, &out, resumable, node.keep_partials)
            .and_then(|said| {
                for line in said {
                    progress.log(line);
                }
                if let Some(a) = &job.launch {
                    a.announce(Verdict::Run);
                }
                let cx = StageContext {
                    name: node.name.clone(),
                    kind: node.kind.name().to_string(),
                    params: node.params.clone(),
                    out: out.clone(),
                    inputs: job.inputs.clone(),
                    workdir: workdir.clone(),
                    pipeline_dir: spec.dir.clone(),
                    project_root: spec.project_root.clone(),
                    fingerprint: job.fingerprint.clone(),
                    device: job.devices.first().map_or(job.device, |d| d.spec),
                    devices: job.devices.clone(),
                    exe: job.exe.clone(),
                    worker: None,
                    threads: std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1),
                    shard: job.shard,
                    world: job.world,
                    cancel: job.cancel.clone(),
                    progress: progress.clone(),
                    log: log.clone(),
                };
                node.kind.run(&cx)
            });
        let ended = SystemTime::now();
        let seconds = t0.elapsed().as_secs_f64();
        let mut rec = Record {
            pipeline: spec.name.clone(),
            stage: node.name.clone(),
            kind: node.kind.name().to_string(),
            fingerprint: job.fingerprint.clone(),
            status: String::new(),
            started: record::rfc3339(started_wall),
            ended: record::rfc3339(ended),
            seconds,
            device: match job.devices.first() {
                Some(d) => d.name.clone(),
                None if node.kind.resources(&node.params).gpu => job.device.describe(),
                None => "cpu".into(),
            },
            devices: job.devices.iter().map(|d| d.name.clone()).collect(),
            device_hours: seconds / 3600.0 * job.devices.len().max(1) as f64,
            images: None,
            attempt,
            what: job.what.clone(),
            output: None,
            error: None,
            info: Default::default(),
            relay_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match result {
            Ok(outcome) => {
                rec.images = outcome.images;
                rec.info = outcome.info;
                if outcome.partial {
                    rec.status = "partial".into();
                    let _ = record::append(workdir, &rec);
                    break (Status::Partial, None);
                }
                match commit::publish(workdir, &node.name, &out, rec) {
                    Ok(state) => break (Status::Done, Some(state)),
                    Err(e) => {
                        let msg = format!("publishing the output failed: {e:#}");
                        log.line(&msg);
                        break (Status::Failed(msg), None);
                    }
                }
            }
            Err(e) if e.downcast_ref::<Cancelled>().is_some() || job.cancel.is_cancelled() => {
                rec.status = "cancelled".into();
                let _ = record::append(workdir, &rec);
                if !resumable {
                    let _ = std::fs::remove_dir_all(&out);
                }
                break (Status::Cancelled, None);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                log.line(&format!("error: {msg}"));
                rec.status = "failed".into();
                rec.error = Some(msg.clone());
                let _ = record::append(workdir, &rec);
                if !resumable {
                    let _ = std::fs::remove_dir_all(&out);
                }
                if attempt <= node.retries {
                    job.ui.println(&format!(
                        "[{}] attempt {attempt} failed; retrying ({} left)",
                        node.name,
                        node.retries + 1 - attempt
                    ));
                    continue;
                }
                break (Status::Failed(msg), None);
            }
        }
    };
    // The stage's scratch folder, when the run left it empty (its private folder was
    // renamed into place): `remove_dir` leaves a non-empty one alone.
    let _ = std::fs::remove_dir(relay_dir.join("tmp").join(&node.name));
    finish(status, state)
}
