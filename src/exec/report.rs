//! What a run reports: where each stage stands ([`Status`]), one line per stage
//! ([`StageReport`]) and the whole run ([`RunReport`]), for the CLI's tables.

use std::path::PathBuf;

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
    /// Another process holds the stage's lock (it is running it).
    Busy(String),
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
    pub fn usable(&self) -> bool {
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
            Status::Busy(_) => "busy",
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
    /// The devices it held while it ran (`--devices`), or, for a dry run, what it would
    /// hold (`1 device`, `2 devices`, `every free device`); empty when no devices are
    /// handed out.
    pub devices: Vec<String>,
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

    /// Whether a stage could not run because another process is running it.
    pub fn busy(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.status, Status::Busy(_)))
    }
}
