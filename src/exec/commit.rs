//! Committing a stage's output: the private folder it writes into, and the order of the
//! steps that publish it (rename into place, state file, run record), so that a crash at any
//! instruction leaves nothing a rerun would take as complete.

use std::path::Path;

use anyhow::Context;

use super::fresh::{self, State};
use crate::base::digest;
use crate::base::record::{self, OutputInfo, Record};

/// Make the private output folder. A resumable stage keeps what a run of the same
/// fingerprint left (and drops leftovers of other fingerprints); others start empty.
pub fn prepare_out(
    relay_dir: &Path,
    name: &str,
    out: &Path,
    resumable: bool,
) -> anyhow::Result<()> {
    if resumable {
        let partial = relay_dir.join("partial");
        if let Ok(entries) = std::fs::read_dir(&partial) {
            let prefix = format!("{name}.");
            for e in entries.flatten() {
                let p = e.path();
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname.starts_with(&prefix) && p != out && !fname[prefix.len()..].contains('.') {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
    } else if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create the stage's folder {}: check that the workdir is writable",
            crate::util::display_path(out)
        )
    })
}

/// Move the private folder into place, then commit the state file and the record.
pub fn publish(workdir: &Path, name: &str, out: &Path, mut rec: Record) -> anyhow::Result<State> {
    let dest = fresh::output_dir(workdir, name);
    if dest.exists() {
        // Move the old output aside first, so that `dest` is never half-old, half-new.
        let trash = workdir.join(".relay").join("trash").join(format!(
            "{name}.{}.{}",
            std::process::id(),
            rec.attempt
        ));
        std::fs::create_dir_all(trash.parent().expect("parent"))?;
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&dest, &trash)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
        std::fs::remove_dir_all(&trash).ok();
    }
    std::fs::rename(out, &dest)
        .with_context(|| format!("renaming {} to {}", out.display(), dest.display()))?;
    let listing = digest::listing(&dest)?;
    let digest = digest::digest_listing(&dest, &listing)?;
    rec.status = "ok".into();
    rec.output = Some(OutputInfo {
        dir: dest.clone(),
        digest,
        files: listing.len(),
        bytes: listing.iter().map(|e| e.size).sum(),
    });
    let state = State {
        record: rec,
        listing,
    };
    fresh::write_state(workdir, name, &state)?;
    record::append(workdir, &state.record)?;
    Ok(state)
}

/// An exclusive lock on a workdir (released by the OS even after kill -9).
pub struct WorkdirLock(#[allow(dead_code)] crate::base::lock::FileLock);

impl WorkdirLock {
    pub fn acquire(workdir: &Path) -> anyhow::Result<Self> {
        use crate::base::lock::{try_lock, TryLock};
        let dir = workdir.join(".relay");
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create {}: check that the workdir is writable",
                crate::util::display_path(&dir)
            )
        })?;
        let lock = match try_lock(&dir.join("lock"))? {
            TryLock::Acquired(l) => l,
            TryLock::Held => anyhow::bail!(
                "another relay run is using {}; wait for it to finish (or stop it) and try again",
                crate::util::display_path(workdir)
            ),
        };
        // Leftover private folders of non-resumable stages from dead runs.
        let _ = std::fs::remove_dir_all(dir.join("tmp"));
        let _ = std::fs::remove_dir_all(dir.join("trash"));
        Ok(Self(lock))
    }
}
