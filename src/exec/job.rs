//! One stage run on its blocking thread: attempts (with `retries:`), the stage's log file,
//! its run record for every attempt, and the commit of a successful one ([`super::commit`]).
//! Never panics on stage errors; they become [`Status::Failed`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::commit;
use super::fresh::{self, State};
use super::progress::Ui;
use super::queue::Lease;
use super::report::Status;
use crate::base::cancel::{Cancel, Cancelled};
use crate::base::record::{self, FingerprintInputs, Record};
use crate::device::DeviceSpec;
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
    pub shard: Option<ShardSel>,
    pub cancel: Cancel,
    pub ui: Ui,
    pub why: Vec<String>,
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
    let short = &job.fingerprint[..16];
    let log = LogFile::create(&relay_dir.join("logs").join(format!("{}.log", node.name)))
        .unwrap_or_else(|_| LogFile::none());
    let reporter = Arc::new(job.ui.stage(&node.name, log.clone()));
    let progress = Progress::new(reporter.clone());
    job.ui
        .println(&format!("[{}] starting: {}", node.name, job.why.join("; ")));
    let started_wall = SystemTime::now();
    let t0 = Instant::now();
    let mut attempt = 0;
    let (status, state) = loop {
        attempt += 1;
        log.line(&format!(
            "=== {} attempt {attempt} fingerprint {} ({})",
            record::rfc3339(SystemTime::now()),
            job.fingerprint,
            job.why.join("; ")
        ));
        let out = if node.kind.resumable() {
            relay_dir
                .join("partial")
                .join(format!("{}.{short}", node.name))
        } else {
            relay_dir.join("tmp").join(format!(
                "{}.{short}.{}.{attempt}",
                node.name,
                std::process::id()
            ))
        };
        let result = commit::prepare_out(&relay_dir, &node.name, &out, node.kind.resumable())
            .and_then(|()| {
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
                    device: job.device,
                    threads: std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1),
                    shard: job.shard,
                    cancel: job.cancel.clone(),
                    progress: progress.clone(),
                    log: log.clone(),
                };
                node.kind.run(&cx)
            });
        let ended = SystemTime::now();
        let mut rec = Record {
            pipeline: spec.name.clone(),
            stage: node.name.clone(),
            kind: node.kind.name().to_string(),
            fingerprint: job.fingerprint.clone(),
            status: String::new(),
            started: record::rfc3339(started_wall),
            ended: record::rfc3339(ended),
            seconds: t0.elapsed().as_secs_f64(),
            device: if node.kind.resources(&node.params).gpu {
                job.device.describe()
            } else {
                "cpu".into()
            },
            device_hours: t0.elapsed().as_secs_f64() / 3600.0,
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
                if !node.kind.resumable() {
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
                if !node.kind.resumable() {
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
    reporter.finish();
    Message {
        node: job.node,
        status,
        seconds: t0.elapsed().as_secs_f64(),
        state,
    }
}
