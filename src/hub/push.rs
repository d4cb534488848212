//! Publishing a staged repo layout as ONE commit: create the repo if missing, skip when the
//! head already holds the same release, otherwise commit with the head as parent.

use std::path::PathBuf;

use hf_hub::repository::{CommitOperation, RepoTypeModel};
use hf_hub::HFError;

use super::card::{RepoConfig, CONFIG_FILE};
use super::client::Op;
use super::{Hub, HubError, RepoId};

/// Files larger than this are named in the message when the Hub refuses an inline upload.
const LARGE_INLINE: u64 = 10 * 1024 * 1024;

/// One file of the layout: where it goes in the repo and where it is now.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub path_in_repo: String,
    pub local: PathBuf,
    pub size: u64,
}

/// What to publish where.
#[derive(Debug, Clone)]
pub struct Commit<'a> {
    pub repo: &'a RepoId,
    /// Branch to commit to (created from `main` when missing).
    pub revision: &'a str,
    /// Create the repo private (an existing repo keeps its visibility).
    pub private: bool,
    pub message: &'a str,
    pub description: &'a str,
    /// Every file of the layout, `config.json` included.
    pub files: &'a [StagedFile],
    /// The release digest written in `config.json` (see [`super::card::release_id`]).
    pub release: &'a str,
}

/// What [`Hub::push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The branch head after publishing (the new commit, or the existing one when unchanged).
    pub commit: String,
    /// The head the commit was made on (None for an empty branch).
    pub parent: Option<String>,
    /// `true`: the head already held this release; nothing was committed.
    pub unchanged: bool,
    /// Files added and deleted by the commit.
    pub added: usize,
    pub deleted: usize,
}

impl Hub {
    /// Publish `c.files` to `c.repo` at `c.revision` as one commit (see the module doc).
    pub fn push(&self, c: &Commit<'_>) -> Result<Pushed, HubError> {
        if self.offline() {
            return Err(HubError::Offline {
                action: "publishing to the Hub",
                hint: " (or publish with `local:`)",
            });
        }
        let repo_str = c.repo.to_string();
        let op = |action: &'static str, path: Option<&'static str>| Op {
            action,
            repo: &repo_str,
            revision: Some(c.revision),
            path,
            write: true,
        };
        self.ensure_repo(c.repo, c.private)?;
        let head = self.branch_head(c.repo, c.revision)?;
        let previous = match &head {
            Some(sha) => self.relay_config_at(c.repo, sha)?,
            None => None,
        };
        if let (Some(sha), Some(prev)) = (&head, &previous) {
            if prev.release == c.release {
                return Ok(Pushed {
                    commit: sha.clone(),
                    parent: Some(sha.clone()),
                    unchanged: true,
                    added: 0,
                    deleted: 0,
                });
            }
        }
        // One commit: every file of the new layout, minus what the previous relay release
        // had that this one has not (files others added to the repo are left alone).
        let mut ops: Vec<CommitOperation> = c
            .files
            .iter()
            .map(|f| CommitOperation::add_file(f.path_in_repo.clone(), f.local.clone()))
            .collect();
        let now: std::collections::BTreeSet<&str> =
            c.files.iter().map(|f| f.path_in_repo.as_str()).collect();
        let stale: Vec<String> = previous
            .as_ref()
            .map(|p| {
                p.files
                    .keys()
                    .filter(|k| !now.contains(k.as_str()) && k.as_str() != CONFIG_FILE)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        ops.extend(stale.iter().map(|p| CommitOperation::delete(p.clone())));
        let (owner, name) = (c.repo.owner.clone(), c.repo.name.clone());
        let result = self.block(|| async {
            let repo = self.client().model(owner, name);
            repo.create_commit()
                .operations(ops)
                .commit_message(c.message.to_string())
                .commit_description(c.description.to_string())
                .revision(c.revision.to_string())
                .maybe_parent_commit(head.clone())
                .send()
                .await
        });
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                return Err(self.commit_error(e, c, head.as_deref(), &op("committing to", None)))
            }
        };
        let commit =
            info.commit_oid
                .filter(|s| !s.is_empty())
                .ok_or_else(|| HubError::Malformed {
                    endpoint: self.endpoint().to_string(),
                    action: "committing to",
                    what: repo_str.clone(),
                    detail: "the commit answer has no commitOid".into(),
                })?;
        Ok(Pushed {
            commit,
            parent: head,
            unchanged: false,
            added: c.files.len(),
            deleted: stale.len(),
        })
    }

    /// Create the repo unless it exists. hf-hub's `exist_ok` takes *any* 409 for "exists",
    /// so existence is checked first and again afterwards.
    fn ensure_repo(&self, repo: &RepoId, private: bool) -> Result<(), HubError> {
        let repo_str = repo.to_string();
        let op = |action| Op {
            action,
            repo: &repo_str,
            revision: None,
            path: None,
            write: true,
        };
        let (owner, name) = (repo.owner.clone(), repo.name.clone());
        let exists = self
            .block(|| async { self.client().model(owner, name).exists().send().await })
            .map_err(|e| self.map_err(e, &op("looking up")))?;
        if exists {
            return Ok(());
        }
        self.block(|| async {
            self.client()
                .create_repository()
                .repo_id(&repo_str)
                .repo_type(RepoTypeModel)
                .private(private)
                .exist_ok(true)
                .send()
                .await
        })
        .map_err(|e| self.map_err(e, &op("creating")))?;
        let (owner, name) = (repo.owner.clone(), repo.name.clone());
        let exists = self
            .block(|| async { self.client().model(owner, name).exists().send().await })
            .map_err(|e| self.map_err(e, &op("looking up")))?;
        if !exists {
            return Err(HubError::Malformed {
                endpoint: self.endpoint().to_string(),
                action: "creating",
                what: repo_str,
                detail: "the Hub answered 409 (conflict) but the repo is not visible: the name may be taken by another repo type".into(),
            });
        }
        Ok(())
    }

    /// The commit a branch points to; a missing branch other than `main` is created from
    /// `main` first. `None`: the branch exists but has no commit.
    fn branch_head(&self, repo: &RepoId, revision: &str) -> Result<Option<String>, HubError> {
        match self.commit_of(repo, revision, true) {
            Err(HubError::RevisionNotFound { .. }) if revision != super::uri::DEFAULT_REVISION => {
                let repo_str = repo.to_string();
                let (owner, name) = (repo.owner.clone(), repo.name.clone());
                self.block(|| async {
                    self.client()
                        .model(owner, name)
                        .create_branch()
                        .branch(revision)
                        .revision(super::uri::DEFAULT_REVISION.to_string())
                        .send()
                        .await
                })
                .map_err(|e| {
                    self.map_err(
                        e,
                        &Op {
                            action: "creating a branch in",
                            repo: &repo_str,
                            revision: Some(revision),
                            path: None,
                            write: true,
                        },
                    )
                })?;
                self.commit_of(repo, revision, true)
            }
            other => other,
        }
    }

    /// The commit sha `revision` points to now (`None` for a branch without commits).
    pub(crate) fn commit_of(
        &self,
        repo: &RepoId,
        revision: &str,
        write: bool,
    ) -> Result<Option<String>, HubError> {
        let repo_str = repo.to_string();
        let (owner, name) = (repo.owner.clone(), repo.name.clone());
        let info = self
            .block(|| async {
                self.client()
                    .model(owner, name)
                    .info()
                    .revision(revision.to_string())
                    .send()
                    .await
            })
            .map_err(|e| {
                self.map_err(
                    e,
                    &Op {
                        action: "reading the head of",
                        repo: &repo_str,
                        revision: Some(revision),
                        path: None,
                        write,
                    },
                )
            })?;
        Ok(info.sha.filter(|s| !s.is_empty()))
    }

    /// The relay `config.json` at a commit, if the repo has one.
    fn relay_config_at(&self, repo: &RepoId, commit: &str) -> Result<Option<RepoConfig>, HubError> {
        let repo_str = repo.to_string();
        let (owner, name) = (repo.owner.clone(), repo.name.clone());
        let bytes = self.block(|| async {
            self.client()
                .model(owner, name)
                .download_file_to_bytes()
                .filename(CONFIG_FILE)
                .revision(commit.to_string())
                .send()
                .await
        });
        match bytes {
            Ok(b) => Ok(serde_json::from_slice::<RepoConfig>(&b).ok()),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(e) => match self.map_err(
                e,
                &Op {
                    action: "reading",
                    repo: &repo_str,
                    revision: Some(commit),
                    path: Some(CONFIG_FILE),
                    write: false,
                },
            ) {
                HubError::FileNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// A failed commit: a moved head (412, or 409 on some servers) is a concurrent push; a
    /// refusal that mentions binaries or size is the inline-upload limit (see the module doc).
    fn commit_error(
        &self,
        e: HFError,
        c: &Commit<'_>,
        parent: Option<&str>,
        op: &Op<'_>,
    ) -> HubError {
        let mapped = self.map_err(e, op);
        match mapped {
            HubError::Http {
                status: 412 | 409, ..
            } => HubError::ConcurrentPush {
                repo: c.repo.to_string(),
                revision: c.revision.to_string(),
                parent: parent.unwrap_or("empty").to_string(),
            },
            HubError::Http {
                status: status @ (400 | 413 | 422),
                ref message,
                ..
            } if status == 413 || mentions_binary(message) => {
                let mut big: Vec<&StagedFile> =
                    c.files.iter().filter(|f| f.size >= LARGE_INLINE).collect();
                if big.is_empty() {
                    big = c
                        .files
                        .iter()
                        .filter(|f| f.path_in_repo.ends_with(".safetensors"))
                        .collect();
                }
                big.sort_by_key(|f| std::cmp::Reverse(f.size));
                let files = if big.is_empty() {
                    "no file is over 10 MiB here".to_string()
                } else {
                    big.iter()
                        .map(|f| format!("{} {}", f.path_in_repo, human_size(f.size)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                HubError::InlineRefused {
                    endpoint: self.endpoint().to_string(),
                    repo: c.repo.to_string(),
                    message: message
                        .trim_start_matches(": ")
                        .trim_end_matches('.')
                        .to_string(),
                    files,
                }
            }
            other => other,
        }
    }
}

fn mentions_binary(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["binary", "lfs", "xet", "too large", "file size", "exceeds"]
        .iter()
        .any(|w| m.contains(w))
}

fn human_size(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= MIB {
        format!("({:.1} MiB)", b as f64 / MIB)
    } else {
        format!("({b} bytes)")
    }
}
