//! Errors in what the user wrote: each carries the file, the line and column where
//! known, the stage, what was expected, and a hint (did-you-mean).

use std::fmt;
use std::path::PathBuf;

/// One problem in a pipeline (or template) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub pos: Option<(usize, usize)>,
    /// The stage the problem is in, if any.
    pub stage: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl SpecError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            pos: None,
            stage: None,
            message: message.into(),
            hint: None,
        }
    }
    pub fn at(mut self, pos: Option<(usize, usize)>) -> Self {
        self.pos = pos;
        self
    }
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::util::display_path(&self.file))?;
        if let Some((line, col)) = self.pos {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a pipeline (validation reports them all at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n{} problems found", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        Self(vec![e])
    }
}

/// Turn a serde_yaml parse error into a [`SpecError`], with a did-you-mean for unknown fields.
pub fn from_yaml_error(file: &std::path::Path, err: &serde_yaml::Error) -> SpecError {
    let pos = err.location().map(|l| (l.line(), l.column()));
    let mut msg = err.to_string();
    // serde_yaml appends " at line L column C"; we print the position up front instead.
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    // "stages.base: unknown field `neds`, expected one of `uses`, `needs`"
    let (path, rest) = match msg.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (Some(p.to_string()), r.to_string()),
        _ => (None, msg.clone()),
    };
    let stage = path
        .as_deref()
        .and_then(|p| p.strip_prefix("stages."))
        .map(|s| s.split('.').next().unwrap_or(s).to_string());
    let mut e = SpecError::new(file, rest.clone()).at(pos);
    if let Some(s) = stage {
        e = e.stage(s);
    }
    if let Some(tail) = rest.strip_prefix("unknown field `") {
        let (field, expected) = tail.split_once('`').unwrap_or((tail, ""));
        let expected: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        e.message = format!("unknown key `{field}`");
        e.hint = Some(match crate::util::did_you_mean(field, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", expected.join(", ")),
        });
    } else if let Some(tail) = rest.strip_prefix("missing field `") {
        let field = tail.split('`').next().unwrap_or(tail);
        e.message = format!("missing required key `{field}`");
    }
    e
}
