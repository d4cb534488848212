//! Names on the Hub: a repo id (`owner/name`) and a checkpoint reference
//! (`hf://owner/name@revision/path`). Parsing only; nothing here touches the network.

use std::fmt;

use super::HubError;

/// The branch used when a reference names none.
pub const DEFAULT_REVISION: &str = "main";

/// A model repo on the Hub: `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId {
    pub owner: String,
    pub name: String,
}

impl RepoId {
    /// Parse `owner/name` (both parts non-empty, no further `/`, the Hub's characters).
    pub fn parse(s: &str) -> Result<Self, HubError> {
        let bad = |why: &str| HubError::BadRepoId {
            input: s.to_string(),
            reason: why.to_string(),
        };
        let (owner, name) = s
            .split_once('/')
            .ok_or_else(|| bad("it has no `/`; write owner/name"))?;
        for part in [owner, name] {
            if part.is_empty() {
                return Err(bad("owner and name must both be non-empty"));
            }
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(bad(&format!(
                    "`{c}` is not allowed (letters, digits, `-`, `_`, `.`)"
                )));
            }
            if part.starts_with('.') || part.ends_with('.') || part.contains("..") {
                return Err(bad("a part may not start or end with `.` or contain `..`"));
            }
        }
        Ok(Self {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    /// The folder hf-hub's cache uses for this model repo (`models--owner--name`).
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// `hf://owner/name@revision/path`: a file or folder of a model repo at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HfUri {
    pub repo: RepoId,
    /// Branch, tag or commit sha (`main` when the reference names none).
    pub revision: String,
    /// Path inside the repo, without leading or trailing `/` (empty: the whole repo).
    pub path: String,
}

impl HfUri {
    /// Whether a user-given checkpoint path is a Hub reference.
    pub fn is_hf(s: &str) -> bool {
        s.starts_with("hf://")
    }

    /// Parse `hf://owner/name[@revision][/path]`. A revision containing `/` (`refs/pr/1`)
    /// must be written URL-encoded (`refs%2Fpr%2F1`), as the Hub's own URLs do.
    pub fn parse(s: &str) -> Result<Self, HubError> {
        let bad = |why: &str| HubError::BadUri {
            input: s.to_string(),
            reason: why.to_string(),
        };
        let rest = s
            .strip_prefix("hf://")
            .ok_or_else(|| bad("it does not start with hf://"))?;
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts
            .next()
            .ok_or_else(|| bad("it names no repo (hf://owner/name)"))?;
        let path = parts.next().unwrap_or_default().trim_matches('/');
        let (name, revision) = match name_rev.split_once('@') {
            Some((_, "")) => return Err(bad("the revision after `@` is empty")),
            Some((n, r)) => (n, r.replace("%2F", "/").replace("%2f", "/")),
            None => (name_rev, DEFAULT_REVISION.to_string()),
        };
        let repo = RepoId::parse(&format!("{owner}/{name}")).map_err(|e| match e {
            HubError::BadRepoId { reason, .. } => bad(&reason),
            other => other,
        })?;
        if path.split('/').any(|p| p == ".." || p == ".") {
            return Err(bad("the path may not contain `.` or `..` segments"));
        }
        Ok(Self {
            repo,
            revision,
            path: path.to_string(),
        })
    }

    /// The same reference pinned to a commit (what manifests and fingerprints record).
    pub fn pinned(&self, commit: &str) -> String {
        Self {
            repo: self.repo.clone(),
            revision: commit.to_string(),
            path: self.path.clone(),
        }
        .to_string()
    }

    /// Whether the revision is already a full commit sha.
    pub fn is_pinned(&self) -> bool {
        is_commit_sha(&self.revision)
    }
}

impl fmt::Display for HfUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hf://{}@{}",
            self.repo,
            self.revision.replace('/', "%2F")
        )?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// A full 40-hex-digit git commit sha.
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let u = HfUri::parse("hf://me/rdm-64@v1/base").unwrap();
        assert_eq!(u.repo.to_string(), "me/rdm-64");
        assert_eq!((u.revision.as_str(), u.path.as_str()), ("v1", "base"));
        let u = HfUri::parse("hf://me/rdm/stages/relay/").unwrap();
        assert_eq!(
            (u.revision.as_str(), u.path.as_str()),
            ("main", "stages/relay")
        );
        let u = HfUri::parse("hf://me/rdm@refs%2Fpr%2F3").unwrap();
        assert_eq!((u.revision.as_str(), u.path.as_str()), ("refs/pr/3", ""));
        assert_eq!(u.to_string(), "hf://me/rdm@refs%2Fpr%2F3");
        let sha = "a".repeat(40);
        assert_eq!(
            HfUri::parse("hf://me/rdm/base").unwrap().pinned(&sha),
            format!("hf://me/rdm@{sha}/base")
        );
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "me/rdm",
            "hf://me",
            "hf://me/",
            "hf:///rdm",
            "hf://me/rdm@/x",
            "hf://me/r d",
            "hf://me/rdm/../x",
        ] {
            assert!(HfUri::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoId::parse("me").is_err());
        assert!(RepoId::parse("me/a/b").is_err());
        assert_eq!(
            RepoId::parse("me/a.b-c_d").unwrap().cache_folder(),
            "models--me--a.b-c_d"
        );
    }
}
