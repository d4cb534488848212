//! The Hugging Face Hub: publish a release (one commit) and resolve `hf://` checkpoints,
//! through the `hf-hub` crate. Returns local paths and commit shas; knows nothing of
//! stages, models or the runner.
//!
//! # Publishing ([`Hub::push`])
//! 1. The caller stages the whole repo layout in a local folder (model card, `config.json`,
//!    one folder per stage); [`card`] writes the card and the repo-level `config.json`,
//!    whose `release` field is a digest of every other file.
//! 2. The repo is created if missing (`private` honoured; an existing repo is used as is).
//! 3. The branch head is read. If its `config.json` carries the same `release`, nothing is
//!    committed: re-publishing the same content is a no-op that returns the existing sha.
//! 4. Otherwise ONE commit adds every file (and deletes the files a previous relay release
//!    listed that this one no longer has), naming the head it read as its parent. If
//!    someone else pushed in between, the Hub answers 412 and [`HubError::ConcurrentPush`]
//!    says to rerun; nothing is committed. A refused commit leaves no partial state: the
//!    Hub applies a commit whole or not at all.
//!
//! ## Large files and Xet
//! hf-hub 1.0 uploads a file the Hub classifies as LFS *only* through Xet storage. When the
//! server does not offer Xet for it, hf-hub falls back to sending the file inline (base64
//! inside the commit), which the real Hub refuses for large binaries: a real publish of a
//! checkpoint therefore goes through Xet (huggingface.co offers it), and a local stand-in
//! Hub can only exercise the inline path. A refused inline upload becomes
//! [`HubError::InlineRefused`], which names the files and what to do instead.
//!
//! # Resolving `hf://owner/name@revision/path` ([`Hub::fetch`])
//! 1. The revision is resolved to a commit sha once per process (so a stage's fingerprint
//!    and its run see the same commit even if the branch moves meanwhile).
//! 2. The files under `path` at that commit are downloaded through hf-hub's cache
//!    (`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`), then checked: sizes against
//!    the Hub's listing, sha256 against LFS pointers and against the relay `config.json`
//!    of the repo when there is one (hf-hub does not check the final GET's status, so an
//!    error page could otherwise be cached as the file). A bad file is removed from the
//!    cache and reported.
//! 3. `HF_HUB_OFFLINE=1`: no network at all; the commit comes from the cache's refs and the
//!    files from its snapshot, or [`HubError::OfflineMissing`] says what is missing.
//!
//! # Credentials and failures
//! The token comes from `HF_TOKEN`, then `HF_TOKEN_PATH`, then `$HF_HOME/token` (what
//! `hf auth login` writes). It is held in memory only, sent only as a header, never
//! formatted (its `Debug` is redacted) and scrubbed from every message built from a
//! server answer. 401/403/404 name the repo, revision or file; hf-hub retries connection
//! errors, 408, 429 and 5xx five times with exponential backoff (it ignores
//! `Retry-After`), after which [`HubError::Network`], [`HubError::RateLimited`] or
//! [`HubError::Server`] says so.

pub mod card;
mod client;
mod fetch;
mod push;
pub mod uri;

use std::path::PathBuf;

pub use client::{offline_from_env, Hub};
pub use fetch::{resolve_local_or_hf, Resolved, ResolvedPath};
pub use push::{Commit, Pushed, StagedFile};
pub use uri::{HfUri, RepoId};

/// Everything that can go wrong talking to the Hub. Each message names the repo, revision
/// or file and says what to do; none contains the token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{input}` is not a Hub reference: {reason} (expected hf://owner/name@revision/path)")]
    BadUri { input: String, reason: String },
    #[error("`{input}` is not a Hub repo id: {reason}")]
    BadRepoId { input: String, reason: String },
    #[error(
        "the Hub at {endpoint} needs a token for {action} `{repo}` and none was found: set \
         HF_TOKEN (or run `hf auth login`, which writes {token_file})"
    )]
    NoToken {
        endpoint: String,
        action: &'static str,
        repo: String,
        token_file: PathBuf,
    },
    #[error(
        "the Hub at {endpoint} rejected the token while {action} `{repo}` (HTTP 401): it is \
         invalid or expired; create a new one at https://huggingface.co/settings/tokens and set HF_TOKEN"
    )]
    BadToken {
        endpoint: String,
        action: &'static str,
        repo: String,
    },
    #[error(
        "the token lacks {access} access to `{repo}` (HTTP 403 from {endpoint}, {action} \
         `{repo}`): use a token with {access} permission for that owner, or publish to a repo you own"
    )]
    Forbidden {
        endpoint: String,
        action: &'static str,
        repo: String,
        access: &'static str,
    },
    #[error(
        "repo `{repo}` was not found on {endpoint} (or it is private and the token cannot see it)"
    )]
    RepoNotFound { endpoint: String, repo: String },
    #[error("revision `{revision}` does not exist in `{repo}` on {endpoint}")]
    RevisionNotFound {
        endpoint: String,
        repo: String,
        revision: String,
    },
    #[error("`{path}` does not exist in `{repo}` at revision `{revision}` ({endpoint})")]
    FileNotFound {
        endpoint: String,
        repo: String,
        revision: String,
        path: String,
    },
    #[error(
        "someone else pushed to `{repo}` branch `{revision}` while this publish was running (its \
         head is no longer {parent}); nothing was committed: rerun to publish on top of the new head"
    )]
    ConcurrentPush {
        repo: String,
        revision: String,
        parent: String,
    },
    #[error(
        "the Hub at {endpoint} refused the commit to `{repo}`: {message}. hf-hub uploads large \
         files only through Xet storage and, where the server does not offer Xet, sends them \
         inline inside the commit, which the Hub refuses for large binaries ({files}). Publish \
         to an endpoint with Xet storage (huggingface.co has it), or write the layout with \
         `local:` and upload that folder with `hf upload`"
    )]
    InlineRefused {
        endpoint: String,
        repo: String,
        message: String,
        files: String,
    },
    #[error(
        "could not reach the Hub at {endpoint} while {action} `{what}` (hf-hub retried 5 times \
         with backoff): {cause}. Check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to \
         use cached files only"
    )]
    Network {
        endpoint: String,
        action: &'static str,
        what: String,
        cause: String,
    },
    #[error(
        "the Hub at {endpoint} is rate-limiting requests (HTTP 429 while {action} `{what}`, \
         still after 5 retries): wait a few minutes and rerun"
    )]
    RateLimited {
        endpoint: String,
        action: &'static str,
        what: String,
    },
    #[error(
        "the Hub at {endpoint} answered HTTP {status} while {action} `{what}`{message} \
         (server errors were retried 5 times): try again later"
    )]
    Server {
        endpoint: String,
        action: &'static str,
        what: String,
        status: u16,
        message: String,
    },
    #[error("the Hub at {endpoint} answered HTTP {status} while {action} `{what}`{message}")]
    Http {
        endpoint: String,
        action: &'static str,
        what: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from the Hub at {endpoint} while {action} `{what}`: {detail}")]
    Malformed {
        endpoint: String,
        action: &'static str,
        what: String,
        detail: String,
    },
    #[error(
        "HF_HUB_OFFLINE is set and {what} is not in the Hub cache ({cache}): run once without \
         HF_HUB_OFFLINE to download it"
    )]
    OfflineMissing { what: String, cache: PathBuf },
    #[error("HF_HUB_OFFLINE is set: {action} needs the network; unset HF_HUB_OFFLINE{hint}")]
    Offline {
        action: &'static str,
        hint: &'static str,
    },
    #[error(
        "`{path}` downloaded from `{repo}` at {commit} is corrupt ({detail}); it was removed from \
         the cache ({cache}): rerun to download it again"
    )]
    Corrupt {
        repo: String,
        commit: String,
        path: String,
        detail: String,
        cache: PathBuf,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not set up the Hub client: {0}")]
    Setup(String),
}

impl HubError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
