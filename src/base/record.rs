//! Run records: one JSON line per stage run in `workdir/.relay/runs.jsonl`, successful or
//! not, and what went into each fingerprint (so `relay plan` can say why a stage is stale).
//! Written by the executor; read by `relay status`, `relay show` and the kinds that report on
//! their inputs (`publish`'s model card).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What goes into a fingerprint, kept in the record so `relay plan` can explain changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FingerprintInputs {
    pub format: u32,
    pub kind: String,
    pub kind_version: u32,
    pub params: Value,
    pub extra: Value,
    pub inputs: Vec<InputRef>,
}

/// An upstream stage as seen by a fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    pub name: String,
    pub fingerprint: String,
    pub digest: String,
}

impl FingerprintInputs {
    pub fn fingerprint(&self) -> String {
        // serde_json maps are sorted, so this is canonical.
        crate::util::sha256_hex(serde_json::to_string(self).expect("json").as_bytes())
    }

    /// Why `self` (now) differs from `old` (the last successful run), in words.
    pub fn explain(&self, old: &FingerprintInputs) -> Vec<String> {
        let mut why = Vec::new();
        if self.kind != old.kind || self.kind_version != old.kind_version {
            why.push(format!(
                "kind changed: {} v{} -> {} v{}",
                old.kind, old.kind_version, self.kind, self.kind_version
            ));
        }
        if self.format != old.format {
            why.push("relay's fingerprint format changed".into());
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten("", &old.params, &mut a);
        flatten("", &self.params, &mut b);
        for (k, v) in &b {
            match a.iter().find(|(ka, _)| ka == k) {
                Some((_, va)) if va != v => {
                    why.push(format!("parameter `{k}` changed: {va} -> {v}"))
                }
                None => why.push(format!("parameter `{k}` added: {v}")),
                _ => {}
            }
        }
        for (k, v) in &a {
            if !b.iter().any(|(kb, _)| kb == k) {
                why.push(format!("parameter `{k}` removed (was {v})"));
            }
        }
        if self.extra != old.extra {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            flatten("", &old.extra, &mut a);
            flatten("", &self.extra, &mut b);
            let changed: Vec<String> = b
                .iter()
                .filter(|x| !a.contains(x))
                .map(|(k, _)| format!("`{k}`"))
                .collect();
            why.push(format!("external inputs changed: {}", changed.join(", ")));
        }
        for i in &self.inputs {
            match old.inputs.iter().find(|o| o.name == i.name) {
                None => why.push(format!("new input `{}`", i.name)),
                Some(o) if o.digest != i.digest => {
                    why.push(format!("input `{}` changed (its outputs differ)", i.name))
                }
                Some(o) if o.fingerprint != i.fingerprint => why.push(format!(
                    "input `{}` changed (it was rebuilt differently)",
                    i.name
                )),
                _ => {}
            }
        }
        for o in &old.inputs {
            if !self.inputs.iter().any(|i| i.name == o.name) {
                why.push(format!("input `{}` removed", o.name));
            }
        }
        if why.is_empty() {
            why.push("fingerprint changed".into());
        }
        why
    }
}

/// Dotted leaves of a JSON value: `sampler.steps = 18`.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

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
    /// `cpu` or `cuda:N`: where it ran (the first of `devices`).
    pub device: String,
    /// Every device it held, when the run handed devices out (`--devices`): `cuda:0`,
    /// `cpu#1`, ... Absent for one process on one device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
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

/// A time as RFC 3339 UTC to the second (`2026-11-25T22:43:33Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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
