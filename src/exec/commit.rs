//! Committing a stage's output, so that a process may die at any instruction and a rerun
//! neither loses completed work nor takes half-written work as complete.
//!
//! 1. [`lock_stage`]: one lock per stage instance (`.relay/locks/<stage>.lock`): the run that
//!    will commit a stage holds it alone; `--shard` workers of one stage share it (each shard
//!    has its own lock, taken by the kind). Locks die with their process.
//! 2. [`prepare_out`]: the private folder a run writes into. A resumable kind gets back what
//!    a run of the same fingerprint left (`.relay/partial/<stage>.<fp16>`); interrupted work
//!    of other fingerprints is kept (the newest `keep_partials` of them) until `relay gc`.
//! 3. [`publish`], in this order: hash the private folder; write the *pending* state
//!    (`.relay/state/<stage>.pending.json`: what the output will be); move the old output
//!    aside; rename the private folder into `workdir/<stage>/`; write the state file (the
//!    commit point); append the run record; drop the pending state and the old output.
//! 4. [`recover`]: a rerun that finds a pending state finishes that commit instead of redoing
//!    the work — it adopts an output whose listing matches (or completes the rename of the
//!    private folder), and drops a pending state that matches nothing.
//!
//! Each step is a crash point (`publish:*`, [`crate::base::crash`]) for the fault tests.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::fresh::{self, State};
use crate::base::crash;
use crate::base::digest;
use crate::base::lock::{self, FileLock, Mode, TryLock};
use crate::base::record::{self, OutputInfo, Record};

/// The lock file of a stage instance.
pub fn stage_lock_path(workdir: &Path, name: &str) -> PathBuf {
    workdir
        .join(".relay")
        .join("locks")
        .join(format!("{name}.lock"))
}

/// Why a stage cannot be run by this process now.
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    #[error(
        "stage `{stage}` is being run by another relay process ({holder}); wait for it to end, \
         or stop it, then run again"
    )]
    Held { stage: String, holder: String },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
}

/// Take the stage's lock: exclusive for a run that commits the stage, shared for a
/// `--shard` worker.
pub fn lock_stage(workdir: &Path, name: &str, mode: Mode) -> Result<FileLock, Busy> {
    let path = stage_lock_path(workdir, name);
    match lock::try_lock_mode(&path, mode)? {
        TryLock::Acquired(mut l) => {
            if mode == Mode::Exclusive {
                l.write_holder();
            }
            Ok(l)
        }
        TryLock::Held => Err(Busy::Held {
            stage: name.to_string(),
            holder: match lock::holder(&path) {
                h if h.is_empty() => "shard workers hold it".into(),
                h => h,
            },
        }),
    }
}

/// The private folders of a resumable stage, `partial/<name>.<fp16>`.
pub fn partials(workdir: &Path, name: &str) -> Vec<PathBuf> {
    let dir = workdir.join(".relay").join("partial");
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.strip_prefix(&prefix)
                .is_some_and(|fp| fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The private folder of a run: the resumable partial of this fingerprint, or a fresh
/// folder under `tmp/<name>/` (this process's, emptied of dead runs' leftovers).
pub fn out_dir(
    workdir: &Path,
    name: &str,
    fingerprint: &str,
    resumable: bool,
    attempt: u32,
) -> PathBuf {
    let relay_dir = workdir.join(".relay");
    let short = &fingerprint[..16.min(fingerprint.len())];
    if resumable {
        relay_dir.join("partial").join(format!("{name}.{short}"))
    } else {
        relay_dir
            .join("tmp")
            .join(name)
            .join(format!("{short}.{}.{attempt}", std::process::id()))
    }
}

/// Make the private output folder `out` (the caller holds the stage's lock). A resumable
/// stage keeps what a run of the same fingerprint left, and of the other fingerprints'
/// partials the newest `keep` (by modification time); the older ones are removed and
/// named in the returned lines. Others start empty.
pub fn prepare_out(
    workdir: &Path,
    name: &str,
    out: &Path,
    resumable: bool,
    keep: usize,
) -> anyhow::Result<Vec<String>> {
    let mut said = Vec::new();
    if resumable {
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = partials(workdir, name)
            .into_iter()
            .filter(|p| p != out)
            .map(|p| {
                let t = std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, p)
            })
            .collect();
        others.sort_by_key(|o| std::cmp::Reverse(o.0));
        for (_, p) in others.iter().skip(keep) {
            if std::fs::remove_dir_all(p).is_ok() {
                said.push(format!(
                    "removed the interrupted work of another fingerprint, {} (`keep_partials: {keep}` keeps the newest)",
                    crate::util::display_path(p)
                ));
            }
        }
        for (_, p) in others.iter().take(keep) {
            said.push(format!(
                "kept the interrupted work of another fingerprint, {} (`relay gc` removes it)",
                crate::util::display_path(p)
            ));
        }
    } else {
        // Leftovers of dead runs of this stage (we hold its lock, so none is alive).
        let _ = std::fs::remove_dir_all(workdir.join(".relay").join("tmp").join(name));
    }
    let _ = std::fs::remove_dir_all(workdir.join(".relay").join("trash").join(name));
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create the stage's folder {}: check that the workdir is writable",
            crate::util::display_path(out)
        )
    })?;
    Ok(said)
}

/// What [`publish`] is about to do, written before it moves anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    state: State,
    /// The private folder the output comes from.
    from: PathBuf,
}

fn pending_path(workdir: &Path, name: &str) -> PathBuf {
    workdir
        .join(".relay")
        .join("state")
        .join(format!("{name}.pending.json"))
}

/// Publish the private folder `out` as the stage's output (module doc, step 3).
pub fn publish(workdir: &Path, name: &str, out: &Path, mut rec: Record) -> anyhow::Result<State> {
    let dest = fresh::output_dir(workdir, name);
    // 1. Everything that needs hashing, in the private folder (rename keeps names,
    //    sizes and modification times, so the listing stays true).
    let listing = digest::listing(out)?;
    let digest = digest::digest_listing(out, &listing)?;
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
    // 2. What the output will be.
    let pending = Pending {
        state: state.clone(),
        from: out.to_path_buf(),
    };
    let text = serde_json::to_string_pretty(&pending).expect("json");
    crate::util::write_atomic(&pending_path(workdir, name), text.as_bytes())?;
    crash::point("publish:pending-written");
    // 3-4. The old output aside, the new one into place.
    move_into_place(workdir, name, out, &dest)?;
    crash::point("publish:after-rename");
    // 5-6. The commit point, then the record.
    fresh::write_state(workdir, name, &state)?;
    crash::point("publish:state-written");
    record::append(workdir, &state.record)?;
    crash::point("publish:recorded");
    let _ = std::fs::remove_file(pending_path(workdir, name));
    let _ = std::fs::remove_dir_all(workdir.join(".relay").join("trash").join(name));
    Ok(state)
}

/// Rename `from` to `dest`, moving an existing `dest` into the stage's trash first, so that
/// `dest` is never half-old, half-new.
fn move_into_place(workdir: &Path, name: &str, from: &Path, dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        let trash =
            crate::util::temp_path(&workdir.join(".relay").join("trash").join(name).join("old"));
        std::fs::create_dir_all(trash.parent().expect("parent"))?;
        std::fs::rename(dest, &trash)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
        crash::point("publish:old-moved");
    }
    std::fs::rename(from, dest)
        .with_context(|| format!("renaming {} to {}", from.display(), dest.display()))
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// No interrupted commit.
    Nothing,
    /// An interrupted commit was finished: its output is the stage's committed output now.
    Adopted,
    /// A pending state matched nothing on disk and was dropped.
    Dropped,
}

/// Finish a commit that a dead process left half done (module doc, step 4). The caller
/// holds the stage's lock.
pub fn recover(workdir: &Path, name: &str) -> anyhow::Result<Recovered> {
    let path = pending_path(workdir, name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Recovered::Nothing);
    };
    let Ok(pending) = serde_json::from_str::<Pending>(&text) else {
        let _ = std::fs::remove_file(&path);
        return Ok(Recovered::Dropped);
    };
    let dest = fresh::output_dir(workdir, name);
    let listed = |dir: &Path| digest::listing(dir).ok();
    let state = pending.state;
    // The same commit, not just the same fingerprint: the listing holds every file's
    // modification time to the nanosecond.
    let same = |s: &State| serde_json::to_value(s).ok() == serde_json::to_value(&state).ok();
    let committed = fresh::read_state(workdir, name).is_some_and(|s| same(&s));
    let adopt = if committed {
        // Died after the state file: only the record may be missing.
        true
    } else if listed(&dest).as_ref() == Some(&state.listing) {
        // Died after the rename.
        true
    } else if listed(&pending.from).as_ref() == Some(&state.listing) {
        // Died before (or while) the output moved: finish the move.
        move_into_place(workdir, name, &pending.from, &dest)?;
        true
    } else {
        false
    };
    if !adopt {
        let _ = std::fs::remove_file(&path);
        return Ok(Recovered::Dropped);
    }
    if !committed {
        fresh::write_state(workdir, name, &state)?;
    }
    let recorded = record::read_all(workdir)
        .iter()
        .any(|r| serde_json::to_value(r).ok() == serde_json::to_value(&state.record).ok());
    if !recorded {
        record::append(workdir, &state.record)?;
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(workdir.join(".relay").join("trash").join(name));
    Ok(Recovered::Adopted)
}
