//! How we run a plan: the drain loop over the dependency [`queue`].
//!
//! 1. [`Executor::new`] takes a validated [`Plan`] and the user's [`RunOptions`] and works
//!    out which stages are selected and forced.
//! 2. [`Executor::run`] drains the graph. Each stage comes out of the [`queue::Queue`]
//!    once all it needs has finished and is *decided* on once ([`Executor::decide`]): skipped
//!    (an input failed), blocked or used as is (not selected), cached (its fingerprint and
//!    outputs match its state file), or queued to run with what it holds (a job slot, and
//!    a device for GPU stages). The queue starts what fits.
//! 3. A stage runs on a blocking thread ([`job::run_stage`]): attempts, its log, its run
//!    record; a successful attempt is committed by [`commit`] (private folder renamed into
//!    `workdir/<stage>/`, then the state file). A crash at any point leaves nothing that a
//!    rerun would take as complete.
//! 4. Workers never touch the terminal directly: they report through [`progress`] and send
//!    one [`job::Message`] back to the loop when they end. The loop owns every stage's
//!    [`NodeRun`], writes `relay.lock` at the end and builds the [`RunReport`].
//!
//! [`run_blocking`] wraps this in a tokio runtime with Ctrl-C wired to cancellation: exec is
//! the only module that drives the executor's runtime.

pub mod commit;
mod devices;
pub mod follow;
pub mod fresh;
pub mod gc;
pub mod job;
pub mod launch;
pub mod lockfile;
pub mod progress;
pub mod queue;
pub mod report;
mod runtime;
pub mod show;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::base::cancel::Cancel;
use crate::base::record::{FingerprintInputs, InputRef};
use crate::base::world::World;
use crate::device::{DeviceSpec, DeviceToken};
use crate::plan::graph::Graph;
use crate::plan::Plan;
use crate::stage::{PlanContext, ShardSel};
use devices::{device_names, need_words, stage_need};
use fresh::State;
use job::{Message, StageJob};
use queue::{Need, Queue};
pub use report::{RunReport, StageReport, Status};
pub use runtime::{cancel_on_ctrl_c, run_blocking};

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
    /// Where GPU stages run when no devices are handed out (`--device`, resolved).
    pub device: DeviceSpec,
    /// The devices the executor hands out (`--devices`, `devices:`, every CUDA device):
    /// a GPU stage holds one (a training stage `resources.gpus`, a sampling stage every
    /// free one) while it runs. Empty: stages run on `device` and share it.
    pub devices: Vec<DeviceToken>,
    /// The relay binary that sampling workers run (default: this executable).
    pub exe: Option<PathBuf>,
    /// How many stages may run at once.
    pub jobs: usize,
    /// `relay exec --shard I/N`.
    pub shard: Option<ShardSel>,
    /// Where to pin results (default: `relay.lock` beside the pipeline file).
    pub lockfile: Option<PathBuf>,
    /// Its place among data-parallel ranks: only `relay exec` under a launcher sets it.
    pub world: World,
    /// Rank 0 of a data-parallel launch: tells the other ranks when the stage starts.
    pub launch: Option<Arc<launch::Announcer>>,
}

/// A stage's fingerprint inputs, its fingerprint, why it must run (empty: fresh) and its
/// last committed state: computed once, when the stage comes out of the queue.
#[derive(Debug, Clone)]
struct Evaluation {
    what: FingerprintInputs,
    fingerprint: String,
    why: Vec<String>,
    state: Option<State>,
}

/// Everything the drain loop knows about one stage of this run.
#[derive(Debug)]
struct NodeRun {
    status: Status,
    /// The committed state of its output, once usable (dependents fingerprint it).
    state: Option<State>,
    fingerprint: Option<String>,
    seconds: f64,
    /// Set when it is queued to run.
    eval: Option<Evaluation>,
    /// The devices it held (or, in a dry run, would hold).
    devices: Vec<String>,
}

impl NodeRun {
    fn new() -> Self {
        Self {
            status: Status::Waiting,
            state: None,
            fingerprint: None,
            seconds: 0.0,
            eval: None,
            devices: Vec::new(),
        }
    }
}

/// What [`Executor::decide`] made of a stage that came out of the queue.
enum Decision {
    /// Decided without running it.
    Settled(Status),
    /// It must run, holding `Need`.
    Run(Box<Evaluation>, Need),
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
    pub fn new(plan: Plan, opts: RunOptions) -> Result<Self, crate::spec::SpecErrors> {
        let n = plan.nodes.len();
        let deps = plan.deps();
        let g = Graph { deps: &deps };
        let mut selected = vec![true; n];
        let pick = |names: &[String]| -> Result<Vec<usize>, crate::spec::SpecErrors> {
            let mut out = Vec::new();
            for s in names {
                out.extend(plan.select(s).map_err(crate::spec::SpecErrors::from)?);
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
                for i in plan.select(f).map_err(crate::spec::SpecErrors::from)? {
                    forced[i] = true;
                }
            }
        }
        devices::check(&plan, &opts, &selected)?;
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

    /// Compute a stage's fingerprint inputs from its inputs' committed states.
    fn fingerprint_inputs(&self, i: usize, runs: &[NodeRun]) -> anyhow::Result<FingerprintInputs> {
        let node = &self.plan.nodes[i];
        let mut inputs = Vec::with_capacity(node.needs.len());
        for &d in &node.needs {
            let name = &self.plan.nodes[d].name;
            let st = runs[d].state.as_ref().with_context(|| {
                format!(
                    "stage `{}`: its input `{name}` has no committed output",
                    node.name
                )
            })?;
            inputs.push(InputRef {
                name: name.clone(),
                fingerprint: st.record.fingerprint.clone(),
                digest: st
                    .record
                    .output
                    .as_ref()
                    .map(|o| o.digest.clone())
                    .unwrap_or_default(),
            });
        }
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

    /// Evaluate a stage once: fingerprint, staleness and last state.
    fn evaluate(&self, i: usize, runs: &[NodeRun]) -> anyhow::Result<Evaluation> {
        let what = self.fingerprint_inputs(i, runs)?;
        let fingerprint = what.fingerprint();
        let name = &self.plan.nodes[i].name;
        if !self.opts.dry_run {
            self.recover(name);
        }
        let state = fresh::read_state(self.workdir(), name);
        let mut why = match &state {
            None => vec!["it has never run".to_string()],
            Some(s) if s.record.fingerprint != fingerprint => what.explain(&s.record.what),
            Some(s) => match fresh::check_intact(self.workdir(), name, s) {
                Ok(()) => vec![],
                Err(e) => vec![e],
            },
        };
        if why.is_empty() && self.forced[i] {
            why.push("forced (--force)".into());
        }
        Ok(Evaluation {
            what,
            fingerprint,
            why,
            state,
        })
    }

    /// Finish a commit a dead process left half done, unless another process holds the
    /// stage (then it is that process's business).
    fn recover(&self, name: &str) {
        let Ok(_lock) =
            commit::lock_stage(self.workdir(), name, crate::base::lock::Mode::Exclusive)
        else {
            return;
        };
        match commit::recover(self.workdir(), name) {
            Ok(commit::Recovered::Adopted) => self.ui.println(&format!(
                "[{name}] adopted its output, whose commit a stopped run had not finished"
            )),
            Ok(_) => {}
            Err(e) => self.ui.println(&format!(
                "warning: [{name}] finishing an interrupted commit failed: {e:#}"
            )),
        }
    }

    /// Decide on a stage whose inputs have all finished (see the module doc, step 2).
    fn decide(&self, i: usize, runs: &mut [NodeRun], stopping: bool) -> Decision {
        let plan = &self.plan;
        let node = &plan.nodes[i];
        // An input that failed (or was skipped, blocked, cancelled) stops it.
        if let Some(&d) = node
            .needs
            .iter()
            .find(|&&d| !runs[d].status.usable() && !matches!(runs[d].status, Status::WouldRun(_)))
        {
            return Decision::Settled(Status::Skipped(format!(
                "`{}` is {}",
                plan.nodes[d].name,
                runs[d].status.word()
            )));
        }
        if !self.selected[i] {
            // Not selected: its existing output is used, whatever runs before it.
            let workdir = self.workdir();
            return Decision::Settled(match fresh::read_state(workdir, &node.name) {
                Some(s) if fresh::check_intact(workdir, &node.name, &s).is_ok() => {
                    runs[i].fingerprint = Some(s.record.fingerprint.clone());
                    runs[i].state = Some(s);
                    Status::Unselected
                }
                _ => Status::Blocked("not selected and has no complete output".into()),
            });
        }
        // Dry run: what needs a stage that would run, would run after it.
        if let Some(&d) = node
            .needs
            .iter()
            .find(|&&d| matches!(runs[d].status, Status::WouldRun(_)))
        {
            return Decision::Settled(Status::WouldRun(vec![format!(
                "input `{}` will run first",
                plan.nodes[d].name
            )]));
        }
        let eval = match self.evaluate(i, runs) {
            Ok(e) => e,
            Err(e) => {
                // Said at once, as for a stage that fails while running (e.g. an `hf://`
                // checkpoint that cannot be resolved).
                self.ui.println(&format!("error: {e:#}"));
                return Decision::Settled(Status::Failed(format!("{e:#}")));
            }
        };
        runs[i].fingerprint = Some(eval.fingerprint.clone());
        if eval.why.is_empty() && self.opts.shard.is_none() {
            runs[i].state = eval.state;
            return Decision::Settled(Status::Cached);
        }
        let need = stage_need(node, &self.opts);
        if self.opts.dry_run {
            runs[i].devices = need_words(need);
            return Decision::Settled(Status::WouldRun(eval.why));
        }
        if stopping {
            return Decision::Settled(Status::Skipped("the run is stopping".into()));
        }
        Decision::Run(Box::new(eval), need)
    }

    /// Run the plan to the end (or until cancelled / a failure without --keep-going).
    pub async fn run(&self) -> anyhow::Result<RunReport> {
        let plan = &self.plan;
        let workdir = self.workdir().to_path_buf();
        let mut runs: Vec<NodeRun> = plan.nodes.iter().map(|_| NodeRun::new()).collect();
        let mut queue = Queue::new(
            plan.deps(),
            plan.order.clone(),
            self.opts.jobs,
            self.opts.devices.len(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let mut failed = false;

        loop {
            // CAUTION: no `?` or early break in this loop: every running stage must be
            // drained so that its record is written and its status reported.
            let stopping =
                |failed: bool| self.cancel.is_cancelled() || (failed && !self.opts.keep_going);
            if stopping(failed) {
                for i in queue.take_queued() {
                    runs[i].status = Status::Skipped("the run is stopping".into());
                    queue.finish(i);
                }
            }
            // 1. Decide on every stage whose inputs have finished.
            while let Some(i) = queue.next_ready() {
                match self.decide(i, &mut runs, stopping(failed)) {
                    Decision::Settled(status) => {
                        failed |= matches!(status, Status::Failed(_));
                        runs[i].status = status;
                        queue.finish(i);
                    }
                    Decision::Run(eval, need) => match queue.enqueue(i, need) {
                        Ok(()) => runs[i].eval = Some(*eval),
                        Err(e) => {
                            let msg = format!("stage `{}` {e}", plan.nodes[i].name);
                            self.ui.println(&format!("error: {msg}"));
                            runs[i].status = Status::Failed(msg);
                            failed = true;
                            queue.finish(i);
                        }
                    },
                }
            }
            // 2. Start what fits.
            while let Some((i, lease)) = queue.start_next() {
                let eval = runs[i].eval.take().expect("a queued stage was evaluated");
                runs[i].status = Status::Running;
                let devices: Vec<DeviceToken> = lease
                    .devices
                    .iter()
                    .map(|&d| self.opts.devices[d].clone())
                    .collect();
                runs[i].devices = device_names(&devices);
                let job = StageJob {
                    plan: self.plan.clone(),
                    node: i,
                    what: eval.what,
                    fingerprint: eval.fingerprint,
                    inputs: plan.nodes[i]
                        .needs
                        .iter()
                        .map(|&d| {
                            job::published_input(
                                plan,
                                &workdir,
                                d,
                                runs[d].fingerprint.clone().unwrap_or_default(),
                            )
                        })
                        .collect(),
                    device: self.opts.device,
                    devices,
                    exe: self.opts.exe.clone(),
                    shard: self.opts.shard,
                    cancel: self.cancel.clone(),
                    ui: self.ui.clone(),
                    why: eval.why,
                    forced: self.forced[i],
                    world: self.opts.world,
                    launch: self.opts.launch.clone(),
                    lease,
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let node = job.node;
                    let msg = match tokio::task::spawn_blocking(move || job::run_stage(job)).await {
                        Ok(m) => m,
                        Err(e) => Message {
                            node,
                            status: Status::Failed(format!("the stage panicked: {e}")),
                            seconds: 0.0,
                            state: None,
                        },
                    };
                    let _ = tx.send(msg);
                });
            }
            if queue.running() == 0 {
                break;
            }
            // 3. Wait for a stage to end.
            let Some(msg) = rx.recv().await else { break };
            queue.finish(msg.node);
            if let Status::Failed(e) = &msg.status {
                failed = true;
                let name = &plan.nodes[msg.node].name;
                self.ui
                    .println(&format!("error: stage `{name}` failed: {e}"));
            }
            let run = &mut runs[msg.node];
            run.seconds = msg.seconds;
            run.status = msg.status;
            run.state = msg.state;
        }

        if !self.opts.dry_run && self.opts.shard.is_none() {
            self.pin(&runs);
        }
        let stages = plan
            .order
            .iter()
            .map(|&i| StageReport {
                name: plan.nodes[i].name.clone(),
                kind: plan.nodes[i].kind.name().to_string(),
                output: runs[i]
                    .status
                    .usable()
                    .then(|| fresh::output_dir(&workdir, &plan.nodes[i].name)),
                status: runs[i].status.clone(),
                seconds: runs[i].seconds,
                fingerprint: runs[i].fingerprint.clone(),
                devices: runs[i].devices.clone(),
            })
            .collect();
        Ok(RunReport {
            stages,
            cancelled: self.cancel.is_cancelled(),
        })
    }

    /// Pin what is good in `relay.lock`.
    fn pin(&self, runs: &[NodeRun]) {
        let plan = &self.plan;
        let good: Vec<lockfile::LockEntry> = plan
            .order
            .iter()
            .filter_map(|&i| {
                let s = runs[i].state.as_ref()?;
                Some((
                    plan.nodes[i].name.clone(),
                    plan.nodes[i].kind.name().to_string(),
                    s.record.fingerprint.clone(),
                    s.record.output.as_ref()?.digest.clone(),
                    s.record.info.get("lock").cloned(),
                ))
            })
            .collect();
        if good.is_empty() {
            return;
        }
        let path = self
            .opts
            .lockfile
            .clone()
            .unwrap_or_else(|| lockfile::lock_path(&plan.spec.file));
        let order: Vec<String> = plan
            .order
            .iter()
            .map(|&i| plan.nodes[i].name.clone())
            .collect();
        if let Err(e) = lockfile::write_lock(&path, &plan.spec.name, &good, &order) {
            self.ui
                .println(&format!("warning: could not write relay.lock: {e}"));
        }
    }
}
