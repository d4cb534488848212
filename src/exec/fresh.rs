//! Freshness: fingerprints, output digests, and why a stage is stale.
//!
//! A stage's fingerprint hashes its kind and kind version, its resolved parameters, what
//! the kind adds ([`StageKind::fingerprint_extra`](crate::stage::StageKind::fingerprint_extra)),
//! and the fingerprint and output digest of every input. A stage is fresh when its state
//! file (the commit point of its last successful run) has the same fingerprint and its
//! output folder still lists the same files with the same sizes and mtimes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::Record;
use crate::util::{hex, sha256_file};

/// Bumped when the fingerprint recipe changes (every stage reruns once).
pub const FINGERPRINT_FORMAT: u32 = 1;

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

/// One file of an output folder, as listed for the intact check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Every file under `dir`, sorted by relative path.
pub fn listing(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        let path = e.path();
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            out.push(Entry {
                path: path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
                size: meta.len(),
                mtime_ns: mtime,
            });
        }
    }
    Ok(())
}

/// The digest of a file (its sha256) or of a folder (sha256 over every file's relative
/// path and sha256, in sorted order).
pub fn digest_path(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return sha256_file(path);
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in listing(path)? {
        let d = sha256_file(&path.join(&e.path))?;
        h.update(e.path.as_bytes());
        h.update([0]);
        h.update(d.as_bytes());
        h.update([b'\n']);
    }
    Ok(hex(&h.finalize()))
}

/// The commit point of a stage's last successful run: its record plus the listing of
/// its published output folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub record: Record,
    pub listing: Vec<Entry>,
}

/// Where a stage's state file lives.
pub fn state_path(workdir: &Path, name: &str) -> PathBuf {
    workdir
        .join(".relay")
        .join("state")
        .join(format!("{name}.json"))
}

/// A stage's published output folder.
pub fn output_dir(workdir: &Path, name: &str) -> PathBuf {
    workdir.join(name)
}

pub fn read_state(workdir: &Path, name: &str) -> Option<State> {
    let text = std::fs::read_to_string(state_path(workdir, name)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_state(workdir: &Path, name: &str, state: &State) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(state).expect("json");
    crate::util::write_atomic(&state_path(workdir, name), text.as_bytes())
}

/// Whether the published output still matches the state's listing; `Err` says what differs.
pub fn check_intact(workdir: &Path, name: &str, state: &State) -> Result<(), String> {
    let dir = output_dir(workdir, name);
    let now = listing(&dir).map_err(|_| {
        format!(
            "its output folder {} is missing",
            crate::util::display_path(&dir)
        )
    })?;
    if now == state.listing {
        return Ok(());
    }
    let changed = state
        .listing
        .iter()
        .find(|e| !now.contains(e))
        .map(|e| e.path.clone())
        .or_else(|| {
            now.iter()
                .find(|e| !state.listing.contains(e))
                .map(|e| e.path.clone())
        })
        .unwrap_or_default();
    Err(format!("its outputs were modified (e.g. `{changed}`)"))
}

/// The JSON form of a stage's parameters (for fingerprints and records).
pub fn params_json(params: &serde_yaml::Value) -> Value {
    serde_json::to_value(params).unwrap_or(Value::Null)
}
