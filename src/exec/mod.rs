//! How we run a plan: the only module that uses tokio.
//!
//! 1. [`Executor::new`] takes a validated [`Plan`] and the user's [`RunOptions`].
//! 2. [`Executor::run`] drains the graph: a stage is *evaluated* once all it needs is
//!    done (its fingerprint needs their output digests), then skipped as fresh, or started
//!    when a job slot (and, for GPU stages, the device) is free.
//! 3. Each stage runs on a blocking thread ([`run_stage`]): it writes into a private
//!    folder, which is renamed into `workdir/<stage>/` only on success; then its state
//!    file (the commit point) and its run record are written. A crash at any point leaves
//!    nothing that a rerun would take as complete.
//! 4. Workers never touch the terminal directly: they report through [`progress`] and
//!    send one [`Message`] back to the loop when they end.

pub mod follow;
pub mod fresh;
pub mod progress;
pub mod record;
pub mod show;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};

use crate::device::DeviceSpec;
use crate::plan::graph::Graph;
use crate::plan::Plan;
use crate::stage::context::LogFile;
use crate::stage::{Cancel, Cancelled, Input, PlanContext, Progress, ShardSel, StageContext};
use fresh::{FingerprintInputs, InputRef, State};
use record::{OutputInfo, Record};

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these stages (their inputs must already be there).
    pub only: Vec<String>,
    /// Run this stage and everything downstream of it.
    pub from: Option<String>,
    /// Run this stage and everything upstream of it.
    pub until: Option<String>,
    /// Rerun these stages even if fresh (`*`: all).
    pub force: Vec<String>,
    /// After a failure, keep running what does not depend on it.
    pub keep_going: bool,
    /// Decide, print, run nothing.
    pub dry_run: bool,
    pub device: DeviceSpec,
    /// How many stages may run at once.
    pub jobs: usize,
    /// `relay exec --shard I/N`.
    pub shard: Option<ShardSel>,
    /// Where to pin results (default: `relay.lock` beside the pipeline file).
    pub lockfile: Option<PathBuf>,
}

/// Where a stage stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Waiting,
    Running,
    /// Ran now and succeeded.
    Done,
    /// Fresh: skipped.
    Cached,
    /// Would run (dry run), and why.
    WouldRun(Vec<String>),
    /// Ran part of its work (`--shard`); output kept private.
    Partial,
    Failed(String),
    Cancelled,
    /// Not run because something it needs did not succeed, or the run was stopping.
    Skipped(String),
    /// Not selected (`--only`, `--from`, `--until`); its existing output is used.
    Unselected,
    /// Not selected and without a usable output: what needs it cannot run.
    Blocked(String),
}

impl Status {
    /// Whether dependents may use this stage's output.
    fn usable(&self) -> bool {
        matches!(self, Status::Done | Status::Cached | Status::Unselected)
    }
    pub fn word(&self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Running => "running",
            Status::Done => "ok",
            Status::Cached => "cached",
            Status::WouldRun(_) => "run",
            Status::Partial => "partial",
            Status::Failed(_) => "FAILED",
            Status::Cancelled => "cancelled",
            Status::Skipped(_) => "skipped",
            Status::Unselected => "not selected",
            Status::Blocked(_) => "blocked",
        }
    }
}

/// A stage's line in the final report.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub seconds: f64,
    pub output: Option<PathBuf>,
    pub fingerprint: Option<String>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stages: Vec<StageReport>,
    pub cancelled: bool,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.status, Status::Failed(_)))
    }
}

/// Sent by a finished stage to the drain loop.
struct Message {
    node: usize,
    status: Status,
    seconds: f64,
    state: Option<State>,
}

/// Runs one plan.
pub struct Executor {
    plan: Arc<Plan>,
    opts: RunOptions,
    selected: Vec<bool>,
    forced: Vec<bool>,
    cancel: Cancel,
    ui: progress::Ui,
}

impl Executor {
    pub fn new(plan: Plan, opts: RunOptions) -> Result<Self, crate::spec::SpecError> {
        let n = plan.nodes.len();
        let deps = plan.deps();
        let g = Graph { deps: &deps };
        let mut selected = vec![true; n];
        let pick = |names: &[String]| -> Result<Vec<usize>, crate::spec::SpecError> {
            let mut out = Vec::new();
            for s in names {
                out.extend(plan.select(s)?);
            }
            Ok(out)
        };
        if !opts.only.is_empty() {
            let only = pick(&opts.only)?;
            selected = (0..n).map(|i| only.contains(&i)).collect();
        }
        if let Some(f) = &opts.from {
            let down = g.downstream(&pick(std::slice::from_ref(f))?);
            selected.iter_mut().zip(down).for_each(|(s, d)| *s &= d);
        }
        if let Some(u) = &opts.until {
            let up = g.upstream(&pick(std::slice::from_ref(u))?);
            selected.iter_mut().zip(up).for_each(|(s, d)| *s &= d);
        }
        let mut forced = vec![false; n];
        for f in &opts.force {
            if f == "*" || f.is_empty() {
                forced = vec![true; n];
            } else {
                for i in plan.select(f)? {
                    forced[i] = true;
                }
            }
        }
        Ok(Self {
            plan: Arc::new(plan),
            opts,
            selected,
            forced,
            cancel: Cancel::new(),
            ui: progress::Ui::new(),
        })
    }

    /// The flag Ctrl-C sets.
    pub fn cancel_handle(&self) -> Cancel {
        self.cancel.clone()
    }

    fn workdir(&self) -> &Path {
        &self.plan.spec.workdir
    }

    /// Compute a stage's fingerprint inputs (all it needs must be usable).
    fn fingerprint_inputs(
        &self,
        i: usize,
        states: &[Option<State>],
    ) -> anyhow::Result<FingerprintInputs> {
        let node = &self.plan.nodes[i];
        let inputs = node
            .needs
            .iter()
            .map(|&d| {
                let st = states[d].as_ref().expect("usable input has a state");
                InputRef {
                    name: self.plan.nodes[d].name.clone(),
                    fingerprint: st.record.fingerprint.clone(),
                    digest: st
                        .record
                        .output
                        .as_ref()
                        .map(|o| o.digest.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let pcx = PlanContext {
            pipeline_dir: &self.plan.spec.dir,
            project_root: &self.plan.spec.project_root,
        };
        let extra = node
            .kind
            .fingerprint_extra(&pcx, &node.params)
            .with_context(|| format!("stage `{}`", node.name))?;
        Ok(FingerprintInputs {
            format: fresh::FINGERPRINT_FORMAT,
            kind: node.kind.name().to_string(),
            kind_version: node.kind.version(),
            params: fresh::params_json(&node.params),
            extra,
            inputs,
        })
    }

    /// Why a stage must run (empty: it is fresh), given its fingerprint inputs.
    fn staleness(
        &self,
        i: usize,
        what: &FingerprintInputs,
        fp: &str,
    ) -> (Vec<String>, Option<State>) {
        let name = &self.plan.nodes[i].name;
        let state = fresh::read_state(self.workdir(), name);
        let mut why = match &state {
            None => vec!["it has never run".to_string()],
            Some(s) if s.record.fingerprint != fp => what.explain(&s.record.what),
            Some(s) => match fresh::check_intact(self.workdir(), name, s) {
                Ok(()) => vec![],
                Err(e) => vec![e],
            },
        };
        if why.is_empty() && self.forced[i] {
            why.push("forced (--force)".into());
        }
        (why, state)
    }

    /// Run the plan to the end (or until cancelled / a failure without --keep-going).
    pub async fn run(&self) -> anyhow::Result<RunReport> {
        let plan = &self.plan;
        let n = plan.nodes.len();
        let workdir = self.workdir().to_path_buf();
        let _lock = if self.opts.dry_run || self.opts.shard.is_some() {
            None
        } else {
            Some(WorkdirLock::acquire(&workdir)?)
        };
        let mut status = vec![Status::Waiting; n];
        let mut states: Vec<Option<State>> = vec![None; n];
        let mut seconds = vec![0.0; n];
        let mut fps: Vec<Option<String>> = vec![None; n];
        type Evaluation = (FingerprintInputs, String, Vec<String>, Option<State>);
        let mut evaluated: Vec<Option<Evaluation>> = vec![None; n];
        let jobs = Arc::new(Semaphore::new(self.opts.jobs.max(1)));
        let gpu = Arc::new(Semaphore::new(1));
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let mut running = 0usize;
        let mut failed = false;

        loop {
            // CAUTION: no `?` or early break in this loop: every running stage must be
            // drained so that its record is written and its status reported.
            let stopping = self.cancel.is_cancelled() || (failed && !self.opts.keep_going);
            let mut progressed = true;
            while progressed {
                let before = status.clone();
                for &i in &plan.order {
                    if status[i] != Status::Waiting {
                        continue;
                    }
                    let needs = &plan.nodes[i].needs;
                    if needs
                        .iter()
                        .any(|&d| matches!(status[d], Status::Waiting | Status::Running))
                    {
                        continue;
                    }
                    if let Some(&d) = needs.iter().find(|&&d| {
                        !status[d].usable() && !matches!(status[d], Status::WouldRun(_))
                    }) {
                        status[i] = Status::Skipped(format!(
                            "`{}` is {}",
                            plan.nodes[d].name,
                            status[d].word()
                        ));
                        continue;
                    }
                    if let Some(&d) = needs
                        .iter()
                        .find(|&&d| matches!(status[d], Status::WouldRun(_)))
                    {
                        status[i] = if self.selected[i] {
                            Status::WouldRun(vec![format!(
                                "input `{}` will run first",
                                plan.nodes[d].name
                            )])
                        } else {
                            Status::Unselected
                        };
                        continue;
                    }
                    if !self.selected[i] {
                        let name = &plan.nodes[i].name;
                        match fresh::read_state(&workdir, name) {
                            Some(s) if fresh::check_intact(&workdir, name, &s).is_ok() => {
                                fps[i] = Some(s.record.fingerprint.clone());
                                states[i] = Some(s);
                                status[i] = Status::Unselected;
                            }
                            _ => {
                                status[i] = Status::Blocked(
                                    "not selected and has no complete output".into(),
                                )
                            }
                        }
                        continue;
                    }
                    // Evaluated once: a stage that waits for a job slot is not re-hashed.
                    if evaluated[i].is_none() {
                        match self.fingerprint_inputs(i, &states) {
                            Ok(what) => {
                                let fp = what.fingerprint();
                                let (why, state) = self.staleness(i, &what, &fp);
                                evaluated[i] = Some((what, fp, why, state));
                            }
                            Err(e) => {
                                // Say why, as for a stage that fails while running (e.g. an
                                // `hf://` checkpoint that cannot be resolved).
                                self.ui.println(&format!("error: {e:#}"));
                                status[i] = Status::Failed(format!("{e:#}"));
                                failed = true;
                                continue;
                            }
                        }
                    }
                    let (what, fp, why, state) = evaluated[i].clone().expect("evaluated above");
                    fps[i] = Some(fp.clone());
                    if why.is_empty() && self.opts.shard.is_none() {
                        states[i] = state;
                        status[i] = Status::Cached;
                        continue;
                    }
                    if self.opts.dry_run {
                        status[i] = Status::WouldRun(why);
                        continue;
                    }
                    if stopping {
                        status[i] = Status::Skipped("the run is stopping".into());
                        continue;
                    }
                    // Start it, if a job slot (and for GPU stages the device) is free;
                    // otherwise it waits for the next stage to finish.
                    let wants_gpu = plan.nodes[i].kind.resources(&plan.nodes[i].params).gpu
                        && self.opts.device.is_accelerator();
                    let Ok(slot) = jobs.clone().try_acquire_owned() else {
                        continue;
                    };
                    let gpu_permit = if wants_gpu {
                        match gpu.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => continue,
                        }
                    } else {
                        None
                    };
                    status[i] = Status::Running;
                    running += 1;
                    let job = StageJob {
                        plan: self.plan.clone(),
                        node: i,
                        what,
                        fingerprint: fp,
                        inputs: needs
                            .iter()
                            .map(|&d| {
                                published_input(
                                    plan,
                                    &workdir,
                                    d,
                                    fps[d].clone().unwrap_or_default(),
                                )
                            })
                            .collect(),
                        device: self.opts.device,
                        shard: self.opts.shard,
                        cancel: self.cancel.clone(),
                        ui: self.ui.clone(),
                        why,
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let held = (slot, gpu_permit);
                        let node = job.node;
                        let msg = match tokio::task::spawn_blocking(move || run_stage(job)).await {
                            Ok(m) => m,
                            Err(e) => Message {
                                node,
                                status: Status::Failed(format!("the stage panicked: {e}")),
                                seconds: 0.0,
                                state: None,
                            },
                        };
                        // Free the slot before reporting, so the loop can start the next stage.
                        drop(held);
                        let _ = tx.send(msg);
                    });
                }
                progressed = status != before;
            }
            if running == 0 {
                break;
            }
            let Some(msg) = rx.recv().await else { break };
            running -= 1;
            seconds[msg.node] = msg.seconds;
            match &msg.status {
                Status::Failed(e) => {
                    failed = true;
                    let name = &plan.nodes[msg.node].name;
                    self.ui
                        .println(&format!("error: stage `{name}` failed: {e}"));
                }
                Status::Done => {}
                _ => {}
            }
            status[msg.node] = msg.status;
            states[msg.node] = msg.state;
        }

        // Pin what is good in relay.lock.
        if !self.opts.dry_run && self.opts.shard.is_none() {
            let good: Vec<record::LockEntry> = plan
                .order
                .iter()
                .filter_map(|&i| {
                    let s = states[i].as_ref()?;
                    Some((
                        plan.nodes[i].name.clone(),
                        plan.nodes[i].kind.name().to_string(),
                        s.record.fingerprint.clone(),
                        s.record.output.as_ref()?.digest.clone(),
                        s.record.info.get("lock").cloned(),
                    ))
                })
                .collect();
            if !good.is_empty() {
                if let Err(e) = record::write_lock(
                    &self
                        .opts
                        .lockfile
                        .clone()
                        .unwrap_or_else(|| record::lock_path(&plan.spec.file)),
                    &plan.spec.name,
                    &good,
                ) {
                    self.ui
                        .println(&format!("warning: could not write relay.lock: {e}"));
                }
            }
        }
        let stages = plan
            .order
            .iter()
            .map(|&i| StageReport {
                name: plan.nodes[i].name.clone(),
                kind: plan.nodes[i].kind.name().to_string(),
                output: matches!(
                    status[i],
                    Status::Done | Status::Cached | Status::Unselected
                )
                .then(|| fresh::output_dir(&workdir, &plan.nodes[i].name)),
                status: status[i].clone(),
                seconds: seconds[i],
                fingerprint: fps[i].clone(),
            })
            .collect();
        Ok(RunReport {
            stages,
            cancelled: self.cancel.is_cancelled(),
        })
    }
}

/// Everything a stage run needs, moved onto its blocking thread.
struct StageJob {
    plan: Arc<Plan>,
    node: usize,
    what: FingerprintInputs,
    fingerprint: String,
    inputs: Vec<Input>,
    device: DeviceSpec,
    shard: Option<ShardSel>,
    cancel: Cancel,
    ui: progress::Ui,
    why: Vec<String>,
}

/// Node `d`'s published output as a downstream stage sees it.
fn published_input(plan: &Plan, workdir: &Path, d: usize, fingerprint: String) -> Input {
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
fn run_stage(job: StageJob) -> Message {
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
        let result =
            prepare_out(&relay_dir, &node.name, &out, node.kind.resumable()).and_then(|()| {
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
                match publish(workdir, &node.name, &out, rec) {
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

/// Make the private output folder. A resumable stage keeps what a run of the same
/// fingerprint left (and drops leftovers of other fingerprints); others start empty.
fn prepare_out(relay_dir: &Path, name: &str, out: &Path, resumable: bool) -> anyhow::Result<()> {
    if resumable {
        let partial = relay_dir.join("partial");
        if let Ok(entries) = std::fs::read_dir(&partial) {
            let prefix = format!("{name}.");
            for e in entries.flatten() {
                let p = e.path();
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname.starts_with(&prefix) && p != out && !fname[prefix.len()..].contains('.') {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
    } else if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create the stage's folder {}: check that the workdir is writable",
            crate::util::display_path(out)
        )
    })
}

/// Move the private folder into place, then commit the state file and the record.
fn publish(workdir: &Path, name: &str, out: &Path, mut rec: Record) -> anyhow::Result<State> {
    let dest = fresh::output_dir(workdir, name);
    if dest.exists() {
        // Move the old output aside first, so that `dest` is never half-old, half-new.
        let trash = workdir.join(".relay").join("trash").join(format!(
            "{name}.{}.{}",
            std::process::id(),
            rec.attempt
        ));
        std::fs::create_dir_all(trash.parent().expect("parent"))?;
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&dest, &trash)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
        std::fs::remove_dir_all(&trash).ok();
    }
    std::fs::rename(out, &dest)
        .with_context(|| format!("renaming {} to {}", out.display(), dest.display()))?;
    let listing = fresh::listing(&dest)?;
    let digest = fresh::digest_path(&dest)?;
    rec.status = "ok".into();
    rec.output = Some(OutputInfo {
        dir: dest.clone(),
        digest,
        files: listing.len(),
        bytes: listing.iter().map(|e| e.size).sum(),
    });
    let state = State {
        record: rec,
        listing,
    };
    fresh::write_state(workdir, name, &state)?;
    record::append(workdir, &state.record)?;
    Ok(state)
}

/// An exclusive lock on a workdir (released by the OS even after kill -9).
pub struct WorkdirLock(#[allow(dead_code)] std::fs::File);

impl WorkdirLock {
    pub fn acquire(workdir: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let dir = workdir.join(".relay");
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create {}: check that the workdir is writable",
                crate::util::display_path(&dir)
            )
        })?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            anyhow::bail!(
                "another relay run is using {}; wait for it to finish (or stop it) and try again",
                crate::util::display_path(workdir)
            );
        }
        // Leftover private folders of non-resumable stages from dead runs.
        let _ = std::fs::remove_dir_all(dir.join("tmp"));
        let _ = std::fs::remove_dir_all(dir.join("trash"));
        Ok(Self(f))
    }
}
