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
