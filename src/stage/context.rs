//! What a running stage sees: its parameters, inputs, output folder, device,
//! cancellation flag and progress reporter. Built by the executor; kinds only read it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Params;
pub use crate::base::cancel::{Cancel, Cancelled};
use crate::base::lock::{self, FileLock, TryLock};
use crate::base::world::World;
use crate::device::{DeviceSpec, DeviceToken};

/// An upstream stage's published output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Input {
    /// Instance name (e.g. `pairs` or `relay@block_scale=0.15`).
    pub name: String,
    /// Its kind (e.g. `downsample`).
    pub kind: String,
    /// Its published output folder (`workdir/<name>/`).
    pub dir: PathBuf,
    /// Its resolved parameters.
    pub params: Params,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// `relay exec ... --shard I/N`: run only part I (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSel {
    pub index: usize,
    pub count: usize,
}

/// What a finished stage reports; goes into its run record.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Images read, seen (training) or made (sampling), if that applies.
    pub images: Option<u64>,
    /// Anything else worth keeping in the record (cost figures, counts, commit shas).
    pub info: serde_json::Map<String, serde_json::Value>,
    /// `false` when the stage did only part of its work (`--shard`): the executor then
    /// keeps the output folder private instead of publishing it.
    pub partial: bool,
}

/// Where progress goes (a terminal bar, or plain log lines). Implemented by the executor.
pub trait Reporter: Send + Sync {
    /// Start (or restart) a unit of work of `len` items (`None`: unknown length).
    fn start(&self, len: Option<u64>, unit: &str);
    /// `n` more items done.
    fn inc(&self, n: u64);
    /// Set the absolute position (e.g. after resuming).
    fn set_position(&self, pos: u64);
    /// A short status message (loss, current shard, ...).
    fn message(&self, msg: String);
    /// A log line (also written to the stage's log file by the executor).
    fn log(&self, line: &str);
}

/// A reporter that drops everything (library tests).
pub struct Silent;

impl Reporter for Silent {
    fn start(&self, _len: Option<u64>, _unit: &str) {}
    fn inc(&self, _n: u64) {}
    fn set_position(&self, _pos: u64) {}
    fn message(&self, _msg: String) {}
    fn log(&self, _line: &str) {}
}

/// The handle stages use to report progress.
#[derive(Clone)]
pub struct Progress(Arc<dyn Reporter>);

impl Progress {
    pub fn new(r: Arc<dyn Reporter>) -> Self {
        Self(r)
    }
    pub fn silent() -> Self {
        Self(Arc::new(Silent))
    }
    pub fn start(&self, len: Option<u64>, unit: &str) {
        self.0.start(len, unit)
    }
    pub fn inc(&self, n: u64) {
        self.0.inc(n)
    }
    pub fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }
    pub fn message(&self, msg: impl Into<String>) {
        self.0.message(msg.into())
    }
    pub fn log(&self, line: impl AsRef<str>) {
        self.0.log(line.as_ref())
    }
}

/// A stage's log file (`workdir/.relay/logs/<stage>.log`), shared by the stage and the executor.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl LogFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(Some(file))),
        })
    }
    /// A log that goes nowhere (library tests).
    pub fn none() -> Self {
        Self {
            path: PathBuf::new(),
            file: Arc::new(Mutex::new(None)),
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn line(&self, line: &str) {
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    }
    /// A second handle on the same file, for a child process's stdout/stderr.
    pub fn try_clone_file(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().append(true).open(&self.path)
    }
}

/// Everything a running stage may use.
pub struct StageContext {
    /// Instance name (`relay@block_scale=0.15`).
    pub name: String,
    /// Kind name (`train`).
    pub kind: String,
    /// Resolved parameters (`with:` after templates, variables, matrix values and `-s`).
    pub params: Params,
    /// The stage's private output folder; renamed to `workdir/<name>/` on success.
    /// It may hold what an interrupted run of the same fingerprint left (resume from it).
    pub out: PathBuf,
    /// Upstream outputs, in the order of `needs:` (matrix instances expanded in place).
    pub inputs: Vec<Input>,
    /// The pipeline's working folder.
    pub workdir: PathBuf,
    /// The folder of the pipeline file.
    pub pipeline_dir: PathBuf,
    /// The project root (holds `stages/` and `datasets/`).
    pub project_root: PathBuf,
    /// The stage's fingerprint (hex).
    pub fingerprint: String,
    /// Where it runs: the first of `devices`, else the device the user chose (`--device`).
    pub device: DeviceSpec,
    /// The devices the executor handed it (`--devices`): a sampling stage runs a worker on
    /// each, a training stage one rank on each. Empty: one process on `device`.
    pub devices: Vec<DeviceToken>,
    /// The relay binary that workers run (default: this executable).
    pub exe: Option<PathBuf>,
    /// Set in a worker process of a fan-out ([`super::fanout`]).
    pub worker: Option<super::fanout::WorkerRole>,
    /// Worker threads the stage may use.
    pub threads: usize,
    /// `relay exec --shard I/N`.
    pub shard: Option<ShardSel>,
    /// Its place among data-parallel ranks: set by `relay exec` under a launcher (torchrun,
    /// srun); one process otherwise. Kinds never read the launcher's variables themselves.
    pub world: World,
    pub cancel: Cancel,
    pub progress: Progress,
    pub log: LogFile,
}

impl StageContext {
    /// A context for running a kind directly in a library test.
    pub fn for_test(kind: &str, params: Params, out: PathBuf, inputs: Vec<Input>) -> Self {
        let workdir = out.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            name: kind.replace('/', "-"),
            kind: kind.to_string(),
            params,
            out,
            inputs,
            pipeline_dir: workdir.clone(),
            project_root: workdir.clone(),
            workdir,
            fingerprint: "0".repeat(64),
            device: DeviceSpec::Cpu,
            devices: Vec::new(),
            exe: None,
            worker: None,
            threads: 1,
            shard: None,
            world: World::default(),
            cancel: Cancel::new(),
            progress: Progress::silent(),
            log: LogFile::none(),
        }
    }

    /// The single input of a kind that takes exactly one (`shard` needs one source, ...).
    pub fn single_input(&self) -> anyhow::Result<&Input> {
        match self.inputs.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!(
                "stage `{}` ({}) needs one upstream stage; add it under `needs:`",
                self.name,
                self.kind
            ),
            many => anyhow::bail!(
                "stage `{}` ({}) takes one upstream stage but `needs:` gives {} ({})",
                self.name,
                self.kind,
                many.len(),
                many.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Hold shard `index` of this stage while writing it: no other process writes the same
    /// shard meanwhile (two workers given the same shards, a requeued task beside its
    /// ghost). Waits while another process holds it — it is alive, or its lock would be
    /// free — so the caller must check afterwards whether that process finished the shard.
    pub fn lock_shard(&self, index: usize) -> anyhow::Result<FileLock> {
        let path = self.shard_lock_path(index);
        match lock::try_lock(&path)? {
            TryLock::Acquired(l) => Ok(l),
            TryLock::Held => {
                self.progress.log(format!(
                    "shard {index} is being written by another process; waiting for it"
                ));
                Ok(lock::lock_blocking(&path)?)
            }
        }
    }

    /// Take shard `index` if no other process holds it (a fan-out worker moves on to the
    /// next shard instead of waiting).
    pub fn try_lock_shard(&self, index: usize) -> anyhow::Result<Option<FileLock>> {
        Ok(match lock::try_lock(&self.shard_lock_path(index))? {
            TryLock::Acquired(l) => Some(l),
            TryLock::Held => None,
        })
    }

    fn shard_lock_path(&self, index: usize) -> PathBuf {
        self.workdir
            .join(".relay")
            .join("locks")
            .join(format!("{}.shard-{index}.lock", self.name))
    }

    /// The name of this process's device in records and manifests.
    pub fn device_name(&self) -> String {
        self.devices
            .first()
            .map_or_else(|| self.device.describe(), |d| d.name.clone())
    }

    /// Resolve a user-given path: absolute as is, relative to the pipeline file's folder.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.pipeline_dir.join(p)
        }
    }
}
