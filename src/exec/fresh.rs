//! Freshness: the state file (the commit point of a stage's last successful run), whether
//! its published output is intact, and the JSON form of parameters that fingerprints hash.
//! What goes into a fingerprint and how it is explained is [`crate::base::record::FingerprintInputs`].
//!
//! A stage's fingerprint hashes its kind and kind version, its resolved parameters, what
//! the kind adds ([`StageKind::fingerprint_extra`](crate::stage::StageKind::fingerprint_extra)),
//! and the fingerprint and output digest of every input. A stage is fresh when its state
//! file (the commit point of its last successful run) has the same fingerprint and its
//! output folder still lists the same files with the same sizes and mtimes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::digest::{listing, Entry};
use crate::base::record::Record;

/// Bumped when the fingerprint recipe changes (every stage reruns once).
pub const FINGERPRINT_FORMAT: u32 = 1;

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
