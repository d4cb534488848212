//! Resolving `hf://owner/name@revision/path` to local files in hf-hub's cache, pinned to a
//! commit and checked after download; cache-only under `HF_HUB_OFFLINE`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use futures::TryStreamExt;
use hf_hub::repository::RepoTreeEntry;

use super::card::{FileEntry, RepoConfig, CONFIG_FILE, REPO_FORMAT};
use super::client::Op;
use super::{HfUri, Hub, HubError, RepoId};

/// A resolved reference: its files are in hf-hub's cache at `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub uri: HfUri,
    /// The commit sha the revision pointed to (the same for the whole process).
    pub commit: String,
    /// The file, or the folder, inside the cache's snapshot of that commit.
    pub local: PathBuf,
    /// Repo paths of the files fetched.
    pub files: Vec<String>,
}

impl Resolved {
    /// `hf://owner/name@<commit>/path`.
    pub fn pinned(&self) -> String {
        self.uri.pinned(&self.commit)
    }
}

/// A checkpoint path as a stage sees it: a local path, or an `hf://` reference resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedPath {
    Local(PathBuf),
    Hub(Resolved),
}

impl ResolvedPath {
    /// Where the files are on this machine.
    pub fn path(&self) -> &Path {
        match self {
            Self::Local(p) => p,
            Self::Hub(r) => &r.local,
        }
    }
    /// What to record: the local path, or the reference pinned to its commit.
    pub fn record(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Hub(r) => r.pinned(),
        }
    }
    /// The commit sha, for a Hub reference.
    pub fn commit(&self) -> Option<&str> {
        match self {
            Self::Local(_) => None,
            Self::Hub(r) => Some(&r.commit),
        }
    }
}

/// Resolve a user-given checkpoint path: `hf://...` through the Hub (downloaded into the
/// cache), anything else relative to `base` (the pipeline's folder).
pub fn resolve_local_or_hf(
    spec: &str,
    base: &Path,
    endpoint: Option<&str>,
) -> Result<ResolvedPath, HubError> {
    if HfUri::is_hf(spec) {
        let uri = HfUri::parse(spec)?;
        let hub = Hub::new(endpoint)?;
        return hub.fetch(&uri).map(ResolvedPath::Hub);
    }
    let p = Path::new(spec);
    Ok(ResolvedPath::Local(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }))
}

/// Revision → commit, once per process (keyed by endpoint, repo and revision).
fn commits() -> &'static Mutex<HashMap<String, String>> {
    static COMMITS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    COMMITS.get_or_init(Default::default)
}

impl Hub {
    /// The commit `uri.revision` points to. Resolved once per process, so that a stage's
    /// fingerprint and its run use the same commit; offline, read from the cache's refs.
    pub fn resolve_commit(&self, uri: &HfUri) -> Result<String, HubError> {
        if uri.is_pinned() {
            return Ok(uri.revision.to_ascii_lowercase());
        }
        let key = format!("{}\n{}\n{}", self.endpoint(), uri.repo, uri.revision);
        if let Some(sha) = commits().lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(sha);
        }
        let ref_file = self.repo_cache(&uri.repo).join("refs").join(&uri.revision);
        let sha = if self.offline() {
            std::fs::read_to_string(&ref_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| super::uri::is_commit_sha(s))
                .ok_or_else(|| HubError::OfflineMissing {
                    what: format!("revision `{}` of `{}`", uri.revision, uri.repo),
                    cache: self.repo_cache(&uri.repo),
                })?
        } else {
            let sha = self
                .commit_of(&uri.repo, &uri.revision, false)?
                .ok_or_else(|| HubError::Malformed {
                    endpoint: self.endpoint().to_string(),
                    action: "resolving",
                    what: uri.to_string(),
                    detail: "the revision has no commit".into(),
                })?;
            // hf-hub writes refs only for downloads by branch name; we download by commit,
            // so record the ref ourselves: HF_HUB_OFFLINE runs find it there later.
            if let Some(dir) = ref_file.parent() {
                if std::fs::create_dir_all(dir).is_ok() {
                    let _ = std::fs::write(&ref_file, &sha);
                }
            }
            sha
        };
        if let Ok(mut m) = commits().lock() {
            m.insert(key, sha.clone());
        }
        Ok(sha)
    }

    /// Download the file or folder `uri` names (at its resolved commit) into the cache and
    /// check it; offline, take it from the cache.
    pub fn fetch(&self, uri: &HfUri) -> Result<Resolved, HubError> {
        let commit = self.resolve_commit(uri)?;
        let snapshot = self.repo_cache(&uri.repo).join("snapshots").join(&commit);
        let local = if uri.path.is_empty() {
            snapshot.clone()
        } else {
            snapshot.join(&uri.path)
        };
        if self.offline() {
            return self.fetch_offline(uri, commit, &snapshot, local);
        }
        let entries = self.list_files(uri, &commit)?;
        // A relay repo's config.json lists every file's sha256: use it to check them.
        let listed = match entries.iter().find(|e| e.path == CONFIG_FILE) {
            Some(_) => None,
            None => self.download(&uri.repo, &commit, CONFIG_FILE).ok(),
        };
        let mut paths = Vec::new();
        for e in &entries {
            paths.push(self.download(&uri.repo, &commit, &e.path)?);
        }
        let relay = relay_files(&listed.unwrap_or_else(|| snapshot.join(CONFIG_FILE)));
        for (e, p) in entries.iter().zip(&paths) {
            let want = relay.get(&e.path);
            let sha = want.map(|w| w.sha256.as_str()).or(e.lfs_sha256.as_deref());
            self.check(
                &uri.repo,
                &commit,
                &e.path,
                p,
                want.map_or(e.size, |w| w.size),
                sha,
            )?;
        }
        Ok(Resolved {
            uri: uri.clone(),
            commit,
            local,
            files: entries.into_iter().map(|e| e.path).collect(),
        })
    }

    fn fetch_offline(
        &self,
        uri: &HfUri,
        commit: String,
        snapshot: &Path,
        local: PathBuf,
    ) -> Result<Resolved, HubError> {
        let missing = |what: String| HubError::OfflineMissing {
            what,
            cache: snapshot.to_path_buf(),
        };
        let mut files = Vec::new();
        if local.is_file() {
            files.push(uri.path.clone());
        } else if local.is_dir() {
            collect_files(snapshot, &local, &mut files)
                .map_err(|e| HubError::io(format!("reading {}", local.display()), e))?;
        }
        if files.is_empty() {
            return Err(missing(format!("`{}`", uri.pinned(&commit))));
        }
        // What a relay repo lists under the path must all be there, and intact.
        let relay = relay_files(&snapshot.join(CONFIG_FILE));
        let prefix = if uri.path.is_empty() {
            String::new()
        } else {
            format!("{}/", uri.path)
        };
        for (path, want) in &relay {
            if path == &uri.path || path.starts_with(&prefix) {
                let p = snapshot.join(path);
                if !p.exists() {
                    return Err(missing(format!("`{path}` of `{}`", uri.pinned(&commit))));
                }
                self.check(&uri.repo, &commit, path, &p, want.size, Some(&want.sha256))?;
            }
        }
        Ok(Resolved {
            uri: uri.clone(),
            commit,
            local,
            files,
        })
    }

    /// `models--owner--name` in the cache.
    fn repo_cache(&self, repo: &RepoId) -> PathBuf {
        self.cache_dir().join(repo.cache_folder())
    }

    /// The files under `uri.path` at `commit` (the path may name a file or a folder).
    fn list_files(&self, uri: &HfUri, commit: &str) -> Result<Vec<Listed>, HubError> {
        let repo_str = uri.repo.to_string();
        let op = Op {
            action: "listing",
            repo: &repo_str,
            revision: Some(&uri.revision),
            path: (!uri.path.is_empty()).then_some(uri.path.as_str()),
            write: false,
        };
        let (owner, name) = (uri.repo.owner.clone(), uri.repo.name.clone());
        let entries: Vec<RepoTreeEntry> = self
            .block(|| async {
                let repo = self.client().model(owner, name);
                if !uri.path.is_empty() {
                    let info = repo
                        .get_paths_info()
                        .paths(vec![uri.path.clone()])
                        .revision(commit.to_string())
                        .send()
                        .await?;
                    let is_dir = info
                        .iter()
                        .any(|e| matches!(e, RepoTreeEntry::Directory { .. }));
                    if !is_dir {
                        return Ok(info);
                    }
                }
                let stream = repo
                    .list_tree()
                    .revision(commit.to_string())
                    .maybe_path_in_repo((!uri.path.is_empty()).then(|| uri.path.clone()))
                    .recursive(true)
                    .send()?;
                stream.try_collect().await
            })
            .map_err(|e| self.map_err(e, &op))?;
        let files: Vec<Listed> = entries
            .into_iter()
            .filter_map(|e| match e {
                RepoTreeEntry::File {
                    path, size, lfs, ..
                } => Some(Listed {
                    lfs_sha256: lfs.and_then(|l| l.sha256),
                    path,
                    size,
                }),
                RepoTreeEntry::Directory { .. } => None,
            })
            .collect();
        if files.is_empty() {
            return Err(HubError::FileNotFound {
                endpoint: self.endpoint().to_string(),
                repo: repo_str,
                revision: uri.revision.clone(),
                path: if uri.path.is_empty() {
                    "(any file)".into()
                } else {
                    uri.path.clone()
                },
            });
        }
        Ok(files)
    }

    /// One file into the cache, by commit.
    fn download(&self, repo: &RepoId, commit: &str, path: &str) -> Result<PathBuf, HubError> {
        let repo_str = repo.to_string();
        let (owner, name) = (repo.owner.clone(), repo.name.clone());
        self.block(|| async {
            self.client()
                .model(owner, name)
                .download_file()
                .filename(path.to_string())
                .revision(commit.to_string())
                .send()
                .await
        })
        .map_err(|e| {
            self.map_err(
                e,
                &Op {
                    action: "downloading",
                    repo: &repo_str,
                    revision: Some(commit),
                    path: Some(path),
                    write: false,
                },
            )
        })
    }

    /// Size (and sha256 when known) of a downloaded file; a bad one is removed from the
    /// cache (its snapshot link and the blob behind it).
    fn check(
        &self,
        repo: &RepoId,
        commit: &str,
        path: &str,
        local: &Path,
        size: u64,
        sha256: Option<&str>,
    ) -> Result<(), HubError> {
        let got = std::fs::metadata(local)
            .map(|m| m.len())
            .map_err(|e| HubError::io(format!("reading {}", local.display()), e))?;
        let detail = if got != size {
            Some(format!("{got} bytes instead of {size}"))
        } else if let Some(want) = sha256 {
            let have = crate::util::sha256_file(local)
                .map_err(|e| HubError::io(format!("reading {}", local.display()), e))?;
            (!have.eq_ignore_ascii_case(want)).then(|| format!("sha256 {have} instead of {want}"))
        } else {
            None
        };
        let Some(detail) = detail else { return Ok(()) };
        if let Ok(blob) = std::fs::canonicalize(local) {
            let _ = std::fs::remove_file(&blob);
        }
        let _ = std::fs::remove_file(local);
        Err(HubError::Corrupt {
            repo: repo.to_string(),
            commit: commit.to_string(),
            path: path.to_string(),
            detail,
            cache: self.repo_cache(repo),
        })
    }
}

/// A file in the Hub's listing.
struct Listed {
    path: String,
    size: u64,
    lfs_sha256: Option<String>,
}

/// The file table of a relay repo's `config.json` (empty if it is not one).
fn relay_files(config: &Path) -> BTreeMap<String, FileEntry> {
    std::fs::read(config)
        .ok()
        .and_then(|b| serde_json::from_slice::<RepoConfig>(&b).ok())
        .filter(|c| c.format == REPO_FORMAT)
        .map(|c| c.files)
        .unwrap_or_default()
}

/// Repo paths (relative to `root`) of the files under `dir`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    out.sort();
    Ok(())
}
