//! Kept interrupted work: what `relay status` lists and `relay gc` removes. Nothing here
//! runs implicitly — a run only trims another fingerprint's partials beyond the stage's
//! `keep_partials` ([`super::commit::prepare_out`]).

use std::path::{Path, PathBuf};

use super::commit;
use crate::base::digest;
use crate::base::lock::Mode;

/// One kept folder of a stage.
#[derive(Debug, Clone)]
pub struct Kept {
    pub stage: String,
    pub path: PathBuf,
    /// `partial` (resumable work of a fingerprint), `tmp` or `trash` (leftovers).
    pub what: &'static str,
    /// The fingerprint prefix of a partial.
    pub fingerprint: Option<String>,
    /// Whether it belongs to the stage's current fingerprint (a rerun resumes from it).
    pub current: bool,
    pub files: usize,
    pub bytes: u64,
}

/// Every kept folder of the stages `names`, given each one's current fingerprint.
pub fn kept(workdir: &Path, stages: &[(String, Option<String>)]) -> Vec<Kept> {
    let mut out = Vec::new();
    for (name, current) in stages {
        let size = |p: &Path| {
            let l = digest::listing(p).unwrap_or_default();
            (l.len(), l.iter().map(|e| e.size).sum())
        };
        for p in commit::partials(workdir, name) {
            let fp = p
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.rsplit('.').next())
                .map(str::to_string);
            let is_current = match (&fp, current) {
                (Some(f), Some(c)) => c.starts_with(f.as_str()),
                _ => false,
            };
            let (files, bytes) = size(&p);
            out.push(Kept {
                stage: name.clone(),
                path: p,
                what: "partial",
                fingerprint: fp,
                current: is_current,
                files,
                bytes,
            });
        }
        for what in ["tmp", "trash"] {
            let p = workdir.join(".relay").join(what).join(name);
            if p.is_dir() {
                let (files, bytes) = size(&p);
                if files == 0 {
                    // An empty folder a finished run left: nothing kept.
                    continue;
                }
                out.push(Kept {
                    stage: name.clone(),
                    path: p,
                    what,
                    fingerprint: None,
                    current: false,
                    files,
                    bytes,
                });
            }
        }
    }
    out
}

/// What `relay gc` did with one kept folder.
#[derive(Debug, Clone)]
pub enum Collected {
    Removed(Kept),
    /// Another process holds the stage: left alone.
    Busy(Kept),
}

/// Remove every kept folder that no rerun would resume from: partials of other
/// fingerprints (those whose current fingerprint is known) and leftovers, each under its
/// stage's lock. `dry_run`: say what would go.
pub fn collect(
    workdir: &Path,
    stages: &[(String, Option<String>)],
    dry_run: bool,
) -> Vec<Collected> {
    let mut out = Vec::new();
    for k in kept(workdir, stages) {
        let unknown =
            k.what == "partial" && stages.iter().any(|(n, c)| n == &k.stage && c.is_none());
        if k.current || unknown {
            continue;
        }
        if dry_run {
            out.push(Collected::Removed(k));
            continue;
        }
        match commit::lock_stage(workdir, &k.stage, Mode::Exclusive) {
            Ok(_lock) => {
                if std::fs::remove_dir_all(&k.path).is_ok() {
                    out.push(Collected::Removed(k));
                }
            }
            Err(_) => out.push(Collected::Busy(k)),
        }
    }
    out
}
