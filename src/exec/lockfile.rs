//! `relay.lock`, beside the pipeline file: the last good fingerprint and output digest of
//! every stage of every pipeline in that folder (commit it, like `dvc.lock`).

use std::path::{Path, PathBuf};

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
