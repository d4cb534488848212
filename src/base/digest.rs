//! Listings and content digests of output folders: what a state file records to tell
//! whether a published output is intact, and what dependents fingerprint.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::util::{hex, sha256_file};

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
    digest_listing(path, &listing(path)?)
}

/// The folder digest of [`digest_path`] over a listing already taken.
pub fn digest_listing(dir: &Path, listing: &[Entry]) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in listing {
        let d = sha256_file(&dir.join(&e.path))?;
        h.update(e.path.as_bytes());
        h.update([0]);
        h.update(d.as_bytes());
        h.update([b'\n']);
    }
    Ok(hex(&h.finalize()))
}
