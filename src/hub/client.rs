//! [`Hub`]: one hf-hub client with its own small tokio runtime, callable from any thread
//! (a stage's blocking thread, or the executor's async loop while it computes
//! fingerprints), plus the translation of hf-hub's errors into [`HubError`]s.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};

use hf_hub::{HFClient, HFError};

use super::HubError;

/// The token, held in memory only. Its `Debug` never shows it.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only operation (`1`, `true`, `yes`, `on`).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The standard token file (`$HF_HOME/token`, written by `hf auth login`).
fn token_file() -> PathBuf {
    hf_hub::hf_home().join("token")
}

/// The token, in hf-hub's order: `HF_TOKEN`, the file at `HF_TOKEN_PATH`, `$HF_HOME/token`
/// (none when `HF_HUB_DISABLE_IMPLICIT_TOKEN` is set).
fn find_token() -> Option<Token> {
    if std::env::var_os("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let clean = |s: String| {
        let t = s.trim().to_string();
        (!t.is_empty()).then_some(Token(t))
    };
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(clean) {
        return Some(t);
    }
    let file = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(token_file);
    std::fs::read_to_string(file).ok().and_then(clean)
}

/// A connection to one Hub endpoint.
pub struct Hub {
    client: HFClient,
    /// `Some` until drop; shut down without blocking so that dropping a `Hub` inside an
    /// async context (fingerprints are computed there) is safe.
    rt: Option<tokio::runtime::Runtime>,
    endpoint: String,
    token: Option<Token>,
    offline: bool,
    cache_dir: PathBuf,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Hub {
    /// A client for `endpoint` (else `HF_ENDPOINT`, else huggingface.co), with the token
    /// from the environment and `HF_HUB_OFFLINE` honoured.
    pub fn new(endpoint: Option<&str>) -> Result<Self, HubError> {
        Self::with_cache(endpoint, None)
    }

    /// [`Hub::new`] with an explicit cache folder instead of hf-hub's default.
    pub fn with_cache(endpoint: Option<&str>, cache_dir: Option<&Path>) -> Result<Self, HubError> {
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| {
                std::env::var("HF_ENDPOINT")
                    .ok()
                    .filter(|e| !e.trim().is_empty())
            })
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        let token = find_token();
        let mut builder = HFClient::builder()
            .endpoint(endpoint.clone())
            .user_agent(format!("relay/{}; hf-hub/1", env!("CARGO_PKG_VERSION")));
        if let Some(t) = &token {
            builder = builder.token(t.0.clone());
        }
        if let Some(dir) = cache_dir {
            builder = builder.cache_dir(dir);
        }
        let client = builder.build().map_err(|e| {
            HubError::Setup(format!(
                "endpoint `{endpoint}`: {e} (check HF_ENDPOINT or `endpoint:`)"
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay-hub")
            .enable_all()
            .build()
            .map_err(|e| HubError::Setup(format!("tokio runtime: {e}")))?;
        let cache_dir = client.cache_dir().to_path_buf();
        Ok(Self {
            client,
            rt: Some(rt),
            endpoint,
            token,
            offline: offline_from_env(),
            cache_dir,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn offline(&self) -> bool {
        self.offline
    }
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
    /// hf-hub's cache folder (`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
    pub(crate) fn client(&self) -> &HFClient {
        &self.client
    }

    /// Run async hf-hub work to completion on this client's runtime. The future is built
    /// and driven on a scoped helper thread, so this works whether or not the caller is
    /// itself inside a tokio runtime.
    pub(crate) fn block<R, Fut>(&self, make: impl FnOnce() -> Fut + Send) -> R
    where
        R: Send,
        Fut: Future<Output = R>,
    {
        let rt = self.rt.as_ref().expect("runtime lives until drop");
        std::thread::scope(|s| {
            let worker = s.spawn(move || rt.block_on(make()));
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Replace the token, wherever it occurs, by `hf_***` (for text that came from a server).
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(t) if t.0.len() >= 4 => text.replace(&t.0, "hf_***"),
            _ => text.to_string(),
        }
    }

    /// Translate an hf-hub error. `op` says what we were doing, to which object.
    pub(crate) fn map_err(&self, e: HFError, op: &Op<'_>) -> HubError {
        let endpoint = self.endpoint.clone();
        let repo = op.repo.to_string();
        let what = op.what();
        let status_of = |e: &HFError| -> Option<(u16, String, Option<String>)> {
            let ctx = match e {
                HFError::Http { context }
                | HFError::AuthRequired { context }
                | HFError::Forbidden { context }
                | HFError::Conflict { context }
                | HFError::RateLimited { context, .. } => Some(context.as_ref()),
                HFError::RepoNotFound { context, .. }
                | HFError::RevisionNotFound { context, .. }
                | HFError::EntryNotFound { context, .. } => context.as_deref(),
                _ => None,
            }?;
            let msg = ctx
                .server_message
                .clone()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| ctx.body.chars().take(300).collect());
            Some((
                ctx.status.as_u16(),
                self.scrub(msg.trim()),
                ctx.error_code.clone(),
            ))
        };
        let detail = status_of(&e);
        let status = detail.as_ref().map(|d| d.0);
        let message = detail
            .as_ref()
            .map(|d| d.1.clone())
            .filter(|m| !m.is_empty());
        let code = detail.as_ref().and_then(|d| d.2.clone());
        let suffix = message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match (&e, status) {
            (HFError::AuthRequired { .. }, _) | (_, Some(401)) => {
                if self.token.is_none() {
                    HubError::NoToken {
                        endpoint,
                        action: op.action,
                        repo,
                        token_file: token_file(),
                    }
                } else {
                    HubError::BadToken {
                        endpoint,
                        action: op.action,
                        repo,
                    }
                }
            }
            (HFError::Forbidden { .. }, _) | (_, Some(403)) => HubError::Forbidden {
                endpoint,
                action: op.action,
                repo,
                access: if op.write { "write" } else { "read" },
            },
            (_, Some(404))
            | (HFError::RepoNotFound { .. }, _)
            | (HFError::RevisionNotFound { .. }, _)
            | (HFError::EntryNotFound { .. }, _) => {
                // The Hub says which in `X-Error-Code`; hf-hub's variant is only a guess
                // from what was asked.
                match (code.as_deref(), &e) {
                    (Some("RepoNotFound"), _) | (None, HFError::RepoNotFound { .. }) => {
                        HubError::RepoNotFound { endpoint, repo }
                    }
                    (Some("RevisionNotFound"), _) | (None, HFError::RevisionNotFound { .. }) => {
                        HubError::RevisionNotFound {
                            endpoint,
                            repo,
                            revision: op.revision.unwrap_or("main").to_string(),
                        }
                    }
                    _ if op.path.is_some() => HubError::FileNotFound {
                        endpoint,
                        repo,
                        revision: op.revision.unwrap_or("main").to_string(),
                        path: op.path.unwrap_or_default().to_string(),
                    },
                    _ if op.revision.is_some() => HubError::RevisionNotFound {
                        endpoint,
                        repo,
                        revision: op.revision.unwrap_or("main").to_string(),
                    },
                    _ => HubError::RepoNotFound { endpoint, repo },
                }
            }
            (HFError::RateLimited { .. }, _) | (_, Some(429)) => HubError::RateLimited {
                endpoint,
                action: op.action,
                what,
            },
            (_, Some(s)) if s >= 500 => HubError::Server {
                endpoint,
                action: op.action,
                what,
                status: s,
                message: suffix,
            },
            (_, Some(s)) => HubError::Http {
                endpoint,
                action: op.action,
                what,
                status: s,
                message: suffix,
            },
            (HFError::Request { source, .. }, None) => HubError::Network {
                endpoint,
                action: op.action,
                what,
                cause: self.scrub(&error_chain(source)),
            },
            (HFError::Io(io), None) => HubError::Io {
                what: format!("{} `{what}`", op.action),
                source: std::io::Error::new(io.kind(), self.scrub(&io.to_string())),
            },
            (other, None) => HubError::Malformed {
                endpoint,
                action: op.action,
                what,
                detail: self.scrub(&other.to_string()),
            },
        }
    }
}

/// What an hf-hub call was doing, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    /// A verb phrase that reads before the object: "creating", "committing to", ...
    pub action: &'static str,
    pub repo: &'a str,
    pub revision: Option<&'a str>,
    pub path: Option<&'a str>,
    /// Whether the call needs write access (for the 403 message).
    pub write: bool,
}

impl Op<'_> {
    /// The object as one string: `owner/name`, `owner/name@rev`, `owner/name@rev/path`.
    fn what(&self) -> String {
        let mut s = self.repo.to_string();
        if let Some(r) = self.revision {
            s.push('@');
            s.push_str(r);
        }
        if let Some(p) = self.path {
            s.push('/');
            s.push_str(p);
        }
        s
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
