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

/// The JSON form of a stage's parameters (for fingerprints and records). Equal to serde's
/// conversion wherever that is faithful; where it is not — ±∞ and NaN (serde writes
/// `null`), mapping keys that are not strings, tagged values (serde fails, and the whole
/// mapping became `null`) — the YAML spelling is kept as a string, so different parameters
/// never share a fingerprint.
pub fn params_json(params: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match params {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && !x.is_finite() => Value::String(
                if x.is_nan() {
                    ".nan"
                } else if x > 0.0 {
                    ".inf"
                } else {
                    "-.inf"
                }
                .into(),
            ),
            _ => serde_json::to_value(n).unwrap_or(Value::Null),
        },
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(s) => Value::Array(s.iter().map(params_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => crate::util::scalar_string(other),
                    };
                    (key, params_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => {
            let mut m = serde_json::Map::new();
            m.insert(t.tag.to_string(), params_json(&t.value));
            Value::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(yaml: &str) -> Value {
        params_json(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn params_json_agrees_with_serde_where_serde_is_faithful() {
        let y: serde_yaml::Value =
            serde_yaml::from_str("{a: 1, b: [0.15, -2, true, null, x], c: {d: 1.0e-3}}").unwrap();
        assert_eq!(params_json(&y), serde_json::to_value(&y).unwrap());
    }

    #[test]
    fn different_parameters_never_share_a_fingerprint_form() {
        // serde maps ∞ and NaN to null and a non-string key to null for the whole mapping.
        assert_ne!(json("{s_max: .inf}"), json("{s_max: null}"));
        assert_ne!(json("{s_max: .inf}"), json("{s_max: -.inf}"));
        assert_ne!(json("{x: .nan}"), json("{x: null}"));
        assert_ne!(json("{1: a}"), json("{2: a}"));
        assert_eq!(json("{1: a}")["1"], "a");
        assert_ne!(json("{x: !t 1}"), json("{x: 1}"));
    }
}
