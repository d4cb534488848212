//! The `publish` stage's parameters (`with:`) and their checks.

use serde::Deserialize;

use crate::hub::RepoId;
use crate::stage::ParamError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishParams {
    /// `owner/name` on the Hub.
    #[serde(default)]
    pub(super) repo: Option<String>,
    /// Or: a folder (relative to the pipeline) that receives the same layout.
    #[serde(default)]
    pub(super) local: Option<String>,
    /// Create the Hub repo private (an existing repo keeps its visibility).
    #[serde(default)]
    pub(super) private: bool,
    /// Branch to commit to (default `main`; created from `main` if missing).
    #[serde(default, alias = "branch")]
    pub(super) revision: Option<String>,
    /// Commit message (default: names the pipeline, the fingerprint and the release).
    #[serde(default)]
    pub(super) message: Option<String>,
    /// Which upstream stages to publish (default: every one with a `model.safetensors`,
    /// plus the preview of a `sample` stage). A name covers its matrix instances.
    #[serde(default)]
    pub(super) stages: Vec<String>,
    /// Hub endpoint (default: `HF_ENDPOINT`, else https://huggingface.co).
    #[serde(default)]
    pub(super) endpoint: Option<String>,
    /// `license:` of the model card (a Hub license id).
    #[serde(default = "default_license")]
    pub(super) license: String,
    /// `datasets:` of the model card (Hub dataset ids).
    #[serde(default)]
    pub(super) datasets: Vec<String>,
}

fn default_license() -> String {
    "other".into()
}

impl PublishParams {
    pub(super) fn validate(&self) -> Result<(), ParamError> {
        match (&self.repo, &self.local) {
            (None, None) => {
                return Err(ParamError::new(
                    "repo",
                    "give `repo: owner/name` (the Hub) or `local: FOLDER`",
                )
                .with_hint("`local:` writes the same layout to a folder, no account needed"))
            }
            (Some(_), Some(_)) => {
                return Err(
                    ParamError::new("local", "give either `repo:` or `local:`, not both")
                        .with_hint("use two publish stages to do both"),
                )
            }
            (Some(r), None) => {
                RepoId::parse(r).map_err(|e| ParamError::new("repo", e.to_string()))?;
            }
            (None, Some(l)) => {
                if l.trim().is_empty() {
                    return Err(ParamError::new("local", "`local:` is empty"));
                }
                for (key, set) in [
                    ("private", self.private),
                    ("revision", self.revision.is_some()),
                    ("endpoint", self.endpoint.is_some()),
                ] {
                    if set {
                        return Err(ParamError::new(
                            key,
                            format!("`{key}` applies to `repo:` only"),
                        ));
                    }
                }
            }
        }
        if let Some(r) = &self.revision {
            if r.trim().is_empty() || r.starts_with('/') || r.ends_with('/') || r.contains("..") {
                return Err(ParamError::new(
                    "revision",
                    format!("`{r}` is not a branch name"),
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ParamError::new(
                    "endpoint",
                    format!("`{e}` is not an http(s) URL"),
                ));
            }
        }
        if self.license.trim().is_empty() {
            return Err(ParamError::new(
                "license",
                "`license` is empty (use a Hub license id, or `other`)",
            ));
        }
        Ok(())
    }

    pub(super) fn revision(&self) -> &str {
        self.revision
            .as_deref()
            .unwrap_or(crate::hub::uri::DEFAULT_REVISION)
    }
}

/// Whether `wanted` (a name in `stages:`) names the input instance `instance`.
pub(super) fn names(wanted: &str, instance: &str) -> bool {
    instance == wanted || instance.split('@').next() == Some(wanted)
}
