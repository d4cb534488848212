//! `relay.lock`, beside the pipeline file: the last good fingerprint and output digest of
//! every stage of every pipeline in that folder (commit it, like `dvc.lock`).
//!
//! Several processes update it (two pipelines of one folder, `relay exec` of parallel
//! branches): each update is a read-modify-write under a lock on the folder, and changes
//! only the stages it knows about — another process's entries stay.

use std::path::{Path, PathBuf};

/// `relay.lock` beside the pipeline file.
pub fn lock_path(pipeline_file: &Path) -> PathBuf {
    pipeline_file.with_file_name("relay.lock")
}

/// One stage's line in `relay.lock`: name, kind, fingerprint, output digest, and what the
/// stage itself asked to pin (its record's `info.lock`, e.g. a publish stage's Hub commit).
pub type LockEntry = (String, String, String, String, Option<serde_json::Value>);

/// Pin the last good fingerprint and digest of `stages` of `pipeline` in `relay.lock`.
/// `order` is every stage of the pipeline in plan order: entries of other stages are
/// dropped (they left the pipeline), entries this run did not pin are kept.
pub fn write_lock(
    path: &Path,
    pipeline: &str,
    stages: &[LockEntry],
    order: &[String],
) -> anyhow::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let _guard = crate::base::lock::lock_dir(folder)?;
    let mut doc: serde_yaml::Mapping = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_yaml::from_str(&s).ok())
        .unwrap_or_default();
    let old = doc
        .get("pipelines")
        .and_then(|p| p.get(pipeline))
        .and_then(|p| p.get("stages"))
        .and_then(|s| s.as_mapping())
        .cloned()
        .unwrap_or_default();
    let mut entries = serde_yaml::Mapping::new();
    for name in order {
        let key = serde_yaml::Value::from(name.clone());
        if let Some((_, kind, fp, digest, pin)) = stages.iter().find(|s| &s.0 == name) {
            let mut m = serde_yaml::Mapping::new();
            m.insert("kind".into(), kind.clone().into());
            m.insert("fingerprint".into(), fp.clone().into());
            m.insert("digest".into(), digest.clone().into());
            if let Some(pin) = pin.as_ref().and_then(|p| serde_yaml::to_value(p).ok()) {
                m.insert("pin".into(), pin);
            }
            entries.insert(key, m.into());
        } else if let Some(v) = old.get(&key) {
            entries.insert(key, v.clone());
        }
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
    Ok(crate::util::write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, fp: &str) -> LockEntry {
        (name.into(), "command".into(), fp.into(), "d".into(), None)
    }

    #[test]
    fn updates_keep_other_processes_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.lock");
        let order: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // Two processes of one pipeline pin different stages; a second pipeline too.
        write_lock(&path, "p", &[entry("a", "1"), entry("b", "2")], &order).unwrap();
        write_lock(&path, "p", &[entry("a", "1"), entry("c", "3")], &order).unwrap();
        write_lock(&path, "q", &[entry("x", "9")], &["x".to_string()]).unwrap();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let p = &doc["pipelines"]["p"]["stages"];
        assert_eq!(p["a"]["fingerprint"], "1");
        assert_eq!(
            p["b"]["fingerprint"], "2",
            "b was pinned by the first process"
        );
        assert_eq!(p["c"]["fingerprint"], "3");
        assert_eq!(doc["pipelines"]["q"]["stages"]["x"]["fingerprint"], "9");
        // A stage that left the pipeline is dropped.
        write_lock(&path, "p", &[entry("a", "4")], &["a".to_string()]).unwrap();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(doc["pipelines"]["p"]["stages"].get("b").is_none());
    }
}
