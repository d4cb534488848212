//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary project folder with a pipeline file in it.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a file (relative to the project) and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A `relay` command running in the project folder.
    pub fn relay(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
        c.args(args).current_dir(self.path());
        c
    }

    /// Start `relay args` (output discarded), poll `ready` every 10 ms until it finds
    /// something (failing with `never` after `timeout`), then kill -9 the process and
    /// return what `ready` found.
    pub fn kill_9_when<T>(
        &self,
        args: &[&str],
        timeout: std::time::Duration,
        never: &str,
        mut ready: impl FnMut() -> Option<T>,
    ) -> T {
        let mut child = self
            .relay(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting relay");
        let t0 = std::time::Instant::now();
        let found = loop {
            if let Some(x) = ready() {
                break x;
            }
            assert!(t0.elapsed() < timeout, "{never}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        found
    }

    /// Run `relay` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.relay(args).output().expect("running relay");
        Run::from(out)
    }

    /// Every run record of the workdir `runs/`.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path().join("runs/.relay/runs.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Records with status `ok` for a stage.
    pub fn ok_runs(&self, stage: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r["stage"] == stage && r["status"] == "ok")
            .count()
    }
}

/// The outcome of one `relay` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Assert the exit code, showing the output on failure.
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The status word of a stage in the summary table (`ok`, `cached`, ...).
    pub fn status_of(&self, stage: &str) -> String {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no line for `{stage}` in\n{}", self.stdout))
            .to_string()
    }
}

/// Write seeded random weights of the tiny network at `res` px into `dir`
/// (`model.safetensors` + `config.json`) and return the network config as JSON, for the
/// caller to wrap into the `config.json` a trained stage would have.
pub fn random_tiny_model(dir: &Path, res: usize, seed: u64) -> serde_json::Value {
    random_model(
        dir,
        &relay::model::UnetConfig::tiny().with_resolution(res),
        seed,
    )
}

/// A randomly initialised model folder of `cfg` (weights N(0, 0.05²) from `seed`).
pub fn random_model(dir: &Path, cfg: &relay::model::UnetConfig, seed: u64) -> serde_json::Value {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use relay::model::{checkpoint, EdmPrecond};
    let cfg = cfg.clone();
    let varmap = VarMap::new();
    let dev = Device::Cpu;
    EdmPrecond::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg).unwrap();
    let mut rng = relay::diffusion::rng::Stream::new(seed);
    let mut vars: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars {
        let vals: Vec<f32> = rng
            .normal(v.elem_count())
            .into_iter()
            .map(|x| (x * 0.05) as f32)
            .collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &dev).unwrap())
            .unwrap();
    }
    checkpoint::save_model_dir(dir, &varmap, &cfg).unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// seed -> sha256 of its PNG, from a sample manifest.
pub fn shas(manifest: &Path) -> std::collections::BTreeMap<u64, String> {
    let (cols, rows) = relay::manifest::read_rows(manifest).unwrap();
    let seed = cols.iter().position(|c| c == "seed").unwrap();
    let sha = cols.iter().position(|c| c == "sha256").unwrap();
    rows.iter()
        .map(|r| {
            (
                r[seed].as_u64().unwrap(),
                r[sha].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
