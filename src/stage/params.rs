//! Typed stage parameters: every kind deserialises its `with:` into a struct marked
//! `#[serde(deny_unknown_fields)]`; [`parse_params`] turns serde's complaints into a
//! [`ParamError`] that names the key and suggests the closest known one.

use serde::de::DeserializeOwned;

use crate::util::did_you_mean;

/// A stage's `with:` mapping after templates, variables, matrix values and overrides.
pub type Params = serde_yaml::Value;

/// A parameter that a kind refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// Dotted path of the offending key under `with:` (e.g. `sampler.steps`), if known.
    pub key: Option<String>,
    /// What was wrong, in words.
    pub message: String,
    /// A hint: did-you-mean or what to write instead.
    pub hint: Option<String>,
}

impl ParamError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Deserialise `with` into `T`, with errors that name the key.
pub fn parse_params<T: DeserializeOwned>(with: &Params) -> Result<T, ParamError> {
    let empty = serde_yaml::Value::Mapping(Default::default());
    let value = if with.is_null() { &empty } else { with };
    serde_path_to_error::deserialize(value.clone()).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        from_serde_message(&path, &inner)
    })
}

/// Turn serde's message into a [`ParamError`] (unknown field -> did-you-mean).
fn from_serde_message(path: &str, msg: &str) -> ParamError {
    // serde: "unknown field `neds`, expected one of `a`, `b`" / "expected `a`"
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let key = if path == "." || path.is_empty() || path == field {
            field.to_string()
        } else if parent.is_empty() || path.ends_with(field) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        };
        let mut e = ParamError::new(key, format!("unknown parameter `{field}`"));
        e.hint = Some(match did_you_mean(field, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None if expected.is_empty() => "this kind takes no parameters here".to_string(),
            None => format!("known parameters: {}", expected.join(", ")),
        });
        return e;
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let key = if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return ParamError::new(key, format!("missing required parameter `{field}`"));
    }
    let key = if path == "." || path.is_empty() {
        None
    } else {
        Some(path.to_string())
    };
    ParamError {
        key,
        message: msg.to_string(),
        hint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        samples_per_shard: u64,
        #[serde(default)]
        shuffle_seed: u64,
    }

    fn yaml(s: &str) -> Params {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn unknown_key_gets_a_hint() {
        let e = parse_params::<P>(&yaml("{samples_per_shard: 3, shufle_seed: 1}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shufle_seed"));
        assert_eq!(e.hint.as_deref(), Some("did you mean `shuffle_seed`?"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse_params::<P>(&yaml("{samples_per_shard: lots}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("samples_per_shard"));
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn missing_key() {
        let e = parse_params::<P>(&yaml("{}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("samples_per_shard"));
    }
}
