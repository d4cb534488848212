//! Run records (JSON lines in `workdir/.relay/runs.jsonl`) and `relay.lock`.
//!
//! Every stage run appends one record, successful or not. `relay.lock`, beside the
//! pipeline file, pins the last good fingerprint and output digest of every stage of
//! every pipeline in that folder (commit it, like `dvc.lock`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fresh::FingerprintInputs;

/// One run of one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub fingerprint: String,
    /// `ok`, `failed` or `cancelled`.
    pub status: String,
    /// UTC, RFC 3339.
    pub started: String,
    pub ended: String,
    pub seconds: f64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Wall-clock hours times the number of devices held.
    pub device_hours: f64,
    /// Images read, seen or made, where that applies.
    #[serde(default)]
    pub images: Option<u64>,
    pub attempt: u32,
    /// What went into the fingerprint (params, inputs, extra).
    pub what: FingerprintInputs,
    /// The published output, on success.
    #[serde(default)]
    pub output: Option<OutputInfo>,
    #[serde(default)]
    pub error: Option<String>,
    /// Kind-specific figures (cost, counts, commit shas).
    #[serde(default)]
    pub info: serde_json::Map<String, serde_json::Value>,
    pub relay_version: String,
}

/// A published output folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputInfo {
    pub dir: PathBuf,
    pub digest: String,
    pub files: usize,
    pub bytes: u64,
}

pub fn runs_path(workdir: &Path) -> PathBuf {
    workdir.join(".relay").join("runs.jsonl")
}

/// Append a record (one line, written with a single `write` so concurrent appends don't interleave).
pub fn append(workdir: &Path, rec: &Record) -> std::io::Result<()> {
    let path = runs_path(workdir);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut line = serde_json::to_string(rec).expect("json");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Every record, oldest first (unreadable lines are skipped).
pub fn read_all(workdir: &Path) -> Vec<Record> {
    std::fs::read_to_string(runs_path(workdir))
        .map(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `relay.lock` beside the pipeline file.
pub fn lock_path(pipeline_file: &Path) -> PathBuf {
    pipeline_file.with_file_name("relay.lock")
}

/// One stage's line in `relay.lock`: name, kind, fingerprint, output digest, and what the
/// stage itself asked to pin (its record's `info.lock`, e.g. a publish stage's Hub commit).
pub type LockEntry = (String, String, String, String, Option<serde_json::Value>);

/// Pin the last good fingerprint and digest of each stage of `pipeline` in `relay.lock`.
pub fn write_lock(path: &Path, pipeline: &str, stages: &[LockEntry]) -> std::io::Result<()> {
    let mut doc: serde_yaml::Mapping = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_yaml::from_str(&s).ok())
        .unwrap_or_default();
    let mut entries = serde_yaml::Mapping::new();
    for (name, kind, fp, digest, pin) in stages {
        let mut m = serde_yaml::Mapping::new();
        m.insert("kind".into(), kind.clone().into());
        m.insert("fingerprint".into(), fp.clone().into());
        m.insert("digest".into(), digest.clone().into());
        if let Some(pin) = pin.as_ref().and_then(|p| serde_yaml::to_value(p).ok()) {
            m.insert("pin".into(), pin);
        }
        entries.insert(name.clone().into(), m.into());
    }
    let pipelines = doc
        .entry("pipelines".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if let Some(p) = pipelines.as_mapping_mut() {
        let mut stages = serde_yaml::Mapping::new();
        stages.insert("stages".into(), entries.into());
        p.insert(pipeline.into(), stages.into());
    }
    let text = format!(
        "# relay.lock: the last good fingerprint and output digest of every stage.\n# Written by `relay run`; commit it to pin results.\n{}",
        serde_yaml::to_string(&doc).expect("yaml")
    );
    crate::util::write_atomic(path, text.as_bytes())
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-25T22:43:33Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2026-11-25T22:43:33Z
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_646_613)),
            "2026-11-25T22:43:33Z"
        );
        // A leap day: 2024-02-29T12:00:00Z
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "2024-02-29T12:00:00Z"
        );
    }
}
