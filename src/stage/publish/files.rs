//! The files of a release: folder names per stage, staging by hard link (or copy), the
//! list that goes to the Hub, and the atomic replace of a `local:` folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::hub::card::{FileEntry, CONFIG_FILE, REPO_FORMAT};
use crate::hub::StagedFile;

/// A folder name for a stage instance (`relay@block_scale=0.15` → `relay-block_scale-0.15`).
pub(super) fn folder_name(stage: &str) -> String {
    let s: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.').to_string()
}

pub(super) fn entry_of(path: &Path) -> anyhow::Result<FileEntry> {
    Ok(FileEntry {
        size: std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len(),
        sha256: crate::util::sha256_file(path)
            .with_context(|| format!("reading {}", path.display()))?,
    })
}

/// Hard-link `from` to `to` (published outputs are never modified in place), or copy.
pub(super) fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Every file under `root`, as repo paths, sorted.
pub(super) fn staged_files(root: &Path) -> anyhow::Result<Vec<StagedFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<StagedFile>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(root, &p, out)?;
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(StagedFile {
                    path_in_repo: rel.to_string_lossy().replace('\\', "/"),
                    size: e.metadata()?.len(),
                    local: p.clone(),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out).with_context(|| format!("listing {}", root.display()))?;
    out.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(out)
}

/// Make `dest` hold exactly the files of `src`, atomically: build a sibling folder, then
/// swap it in. An existing `dest` is replaced only if it is empty or a relay release.
pub(super) fn replace_folder(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "release".into());
    if dest.exists() {
        let ours = std::fs::read(dest.join(CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("format").and_then(Value::as_str) == Some(REPO_FORMAT));
        let empty = std::fs::read_dir(dest)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !ours && !empty {
            bail!(
                "`{}` exists and is not a relay release (no relay config.json): choose another `local:` folder, or remove it",
                crate::util::display_path(dest)
            );
        }
    }
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp: PathBuf = parent.join(format!(".{name}.relay-tmp-{}", std::process::id()));
    let old: PathBuf = parent.join(format!(".{name}.relay-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for f in staged_files(src)? {
        link_or_copy(&f.local, &tmp.join(&f.path_in_repo))?;
    }
    if dest.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dest, &old)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
