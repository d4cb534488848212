//! What the YAML says: parse a pipeline file, pull in `uses:` templates, interpolate
//! `${var}`s and apply `-s stage.key=value` overrides. Nothing more: kinds, needs and
//! cycles are checked by [`crate::plan`].
//!
//! Paths: every relative path in a pipeline (workdir, template, `deps`, source `path`)
//! is relative to the pipeline file's folder; templates are also looked up in the
//! project root (the nearest folder at or above the pipeline that has `stages/` or
//! `datasets/`).

pub mod error;
pub mod locate;
pub mod wire;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_yaml::Value;

use wire::ResourcesWire;

pub use error::{SpecError, SpecErrors};

/// A parsed pipeline, templates resolved, variables and overrides applied.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub description: Option<String>,
    /// The pipeline file (absolute).
    pub file: PathBuf,
    /// Its folder (absolute).
    pub dir: PathBuf,
    /// The project root (holds `stages/`, `datasets/`), or the pipeline's folder.
    pub project_root: PathBuf,
    /// Where artifacts live (absolute).
    pub workdir: PathBuf,
    /// The file's text, for locating errors found later.
    pub source: String,
    /// `executor:` (`local` or `slurm`).
    pub executor: Option<String>,
    /// `devices:` as a device list (`0,1` or `cpu*4`), checked when a run starts.
    pub devices: Option<String>,
    pub stages: Vec<StageSpec>,
}

/// One declared stage (before matrix expansion).
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    /// As written (`shard` or `stages/edm-adm-64.yaml`).
    pub uses: String,
    /// The kind (from `uses:` or from the template's `kind:`).
    pub kind: String,
    /// The template file, if `uses:` named one.
    pub template: Option<PathBuf>,
    pub needs: Vec<String>,
    /// Parameters: the template's, deep-merged with the pipeline's, then overrides.
    pub with: Value,
    pub matrix: Option<IndexMap<String, Vec<Value>>>,
    pub name_template: Option<String>,
    pub retries: u32,
    pub description: Option<String>,
    /// Cluster resources: the stage's over the pipeline's defaults.
    pub resources: wire::ResourcesWire,
    /// How many interrupted runs of other fingerprints a resumable stage keeps.
    pub keep_partials: usize,
}

/// `-s stage.key=value` from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// As written on the command line (passed on to cluster workers).
    pub text: String,
    pub stage: String,
    pub key: Vec<String>,
    pub value: Value,
}

impl std::str::FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lhs, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected stage.key=value"))?;
        let (stage, key) = lhs.split_once('.').ok_or_else(|| {
            format!("`{s}`: expected stage.key=value (no key after the stage name)")
        })?;
        if stage.is_empty() || key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("`{s}`: expected stage.key=value"));
        }
        // The value is a YAML scalar (`3`, `0.15`, `true`, `[64, 16]`); anything that is
        // not valid YAML is taken as a string.
        let value = serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.into()));
        Ok(Self {
            text: s.to_string(),
            stage: stage.to_string(),
            key: key.split('.').map(str::to_string).collect(),
            value,
        })
    }
}

/// `--var name=value` from the command line: replaces a `vars:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct VarOverride {
    /// As written (passed on to cluster workers).
    pub text: String,
    pub name: String,
    pub value: Value,
}

impl std::str::FromStr for VarOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected name=value"))?;
        if name.is_empty() {
            return Err(format!("`{s}`: expected name=value"));
        }
        let value = serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.into()));
        Ok(Self {
            text: s.to_string(),
            name: name.to_string(),
            value,
        })
    }
}

/// Load a pipeline file and apply `overrides`.
pub fn load(path: &Path, overrides: &[Override]) -> Result<PipelineSpec, SpecErrors> {
    load_with_vars(path, overrides, &[])
}

/// Load a pipeline file, replace `vars:` entries, and apply `overrides`.
pub fn load_with_vars(
    path: &Path,
    overrides: &[Override],
    var_overrides: &[VarOverride],
) -> Result<PipelineSpec, SpecErrors> {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let source = std::fs::read_to_string(&file).map_err(|e| {
        SpecError::new(&file, format!("cannot read the pipeline file: {e}"))
            .hint("check the path; pipelines usually live in `pipelines/`")
    })?;
    let wire: wire::PipelineWire = serde_yaml::from_str(&source).map_err(|e| {
        let mut err = error::from_yaml_error(&file, &e);
        // serde reports a duplicate key at the start of its mapping; point at the duplicate.
        if let Some(name) = err
            .message
            .strip_prefix("duplicate name `")
            .and_then(|r| r.split('`').next())
        {
            let hits: Vec<usize> = source
                .lines()
                .enumerate()
                .filter(|(_, l)| {
                    l.trim_start()
                        .strip_prefix(name)
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
                .map(|(i, _)| i)
                .collect();
            if let Some(&line) = hits.get(1) {
                let col = source
                    .lines()
                    .nth(line)
                    .map(|l| l.len() - l.trim_start().len())
                    .unwrap_or(0);
                err.pos = Some((line + 1, col + 1));
                err.stage = Some(name.to_string());
            }
        }
        err
    })?;
    if !valid_name(&wire.name) {
        return Err(
            SpecError::new(&file, format!("invalid pipeline name `{}`", wire.name))
                .at(locate::locate(&source, &["name"]))
                .hint("use letters, digits, `_` and `-` only (it names folders and Slurm jobs)")
                .into(),
        );
    }
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let project_root = find_project_root(&dir);
    let workdir = match &wire.workdir {
        Some(w) => normalize(&dir.join(w)),
        None => project_root.join("runs").join(&wire.name),
    };
    let mut vars = wire.vars.0;
    for v in var_overrides {
        if !vars.contains_key(&v.name) {
            let names: Vec<&String> = vars.keys().collect();
            return Err(SpecError::new(
                "<command line>",
                format!(
                    "`--var {}`: the pipeline has no variable `{}`",
                    v.text, v.name
                ),
            )
            .hint_opt(
                crate::util::did_you_mean(&v.name, &names)
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| {
                        Some(format!(
                            "variables: {}",
                            vars.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    }),
            )
            .into());
        }
        vars.insert(v.name.clone(), v.value.clone());
    }
    let default_resources = match &wire.resources {
        None => ResourcesWire::default(),
        Some(v) => parse_resources(
            interpolate(v.clone(), &vars),
            &file,
            &source,
            &["resources"],
            None,
        )?,
    };
    if let Some(e) = wire
        .executor
        .as_deref()
        .filter(|e| !["local", "slurm"].contains(e))
    {
        return Err(SpecError::new(&file, format!("unknown executor `{e}`"))
            .at(locate::locate(&source, &["executor"]))
            .hint("use `local` or `slurm`")
            .into());
    }
    let devices = match &wire.devices {
        None | Some(serde_yaml::Value::Null) => None,
        Some(v) => Some(devices_list(v).ok_or_else(|| {
            SpecError::new(
                &file,
                "`devices` must be a list like `0,1`, `[0, 1]` or `cpu*4`",
            )
            .at(locate::locate(&source, &["devices"]))
        })?),
    };
    let mut errors = Vec::new();
    let mut stages = Vec::new();
    for (name, st) in wire.stages.0 {
        let at = |keys: &[&str]| {
            let mut path = vec!["stages", name.as_str()];
            path.extend_from_slice(keys);
            locate::locate(&source, &path)
        };
        if !valid_name(&name) {
            errors.push(
                SpecError::new(&file, format!("invalid stage name `{name}`"))
                    .at(at(&[]))
                    .hint("use letters, digits, `_` and `-` only"),
            );
            continue;
        }
        let interp = |v: Value, keys: &[&str]| -> Result<Value, SpecError> {
            interpolate(v, &vars).map_err(|(var, msg)| {
                let pos = locate::locate_value(&source, &[&["stages", name.as_str()], keys].concat(), &format!("${{{var}}}"));
                SpecError::new(&file, msg).at(pos).stage(&name).hint_opt(
                    crate::util::did_you_mean(&var, &vars.keys().collect::<Vec<_>>())
                        .map(|s| format!("did you mean `${{{s}}}`?"))
                        .or_else(|| Some(format!("define it under `vars:`, or write `$${{{var}}}` for a literal `${{{var}}}`"))),
                )
            })
        };
        let resolved = (|| -> Result<StageSpec, SpecError> {
            let uses = match interp(Value::String(st.uses.clone()), &["uses"])? {
                Value::String(s) => s,
                other => scalar_string(&other),
            };
            let needs = st
                .needs
                .iter()
                .map(|n| interp(Value::String(n.clone()), &["needs"]).map(|v| scalar_string(&v)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut with = interp(st.with.clone(), &["with"])?;
            let matrix = match st.matrix {
                Some(m) => {
                    let mut out = IndexMap::new();
                    for (k, vs) in m.0 {
                        let vs = vs
                            .into_iter()
                            .map(|v| interp(v, &["matrix"]))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.insert(k, vs);
                    }
                    Some(out)
                }
                None => None,
            };
            let (kind, template) = if is_template_ref(&uses) {
                let tpath = find_template(&uses, &dir, &project_root).ok_or_else(|| {
                    SpecError::new(&file, format!("template `{uses}` not found"))
                        .at(at(&["uses"]))
                        .stage(&name)
                        .hint_opt(template_hint(&uses, &project_root))
                })?;
                let text = std::fs::read_to_string(&tpath).map_err(|e| {
                    SpecError::new(&tpath, format!("cannot read template: {e}")).stage(&name)
                })?;
                let t: wire::TemplateWire = serde_yaml::from_str(&text)
                    .map_err(|e| error::from_yaml_error(&tpath, &e).stage(&name))?;
                let base = interpolate(t.with, &vars)
                    .map_err(|(_, msg)| SpecError::new(&tpath, msg).stage(&name))?;
                with = merge(base, with);
                (t.kind, Some(tpath))
            } else {
                (uses.clone(), None)
            };
            if with.is_null() {
                with = Value::Mapping(Default::default());
            }
            if !with.is_mapping() {
                return Err(
                    SpecError::new(&file, "`with:` must be a mapping of parameters")
                        .at(at(&["with"]))
                        .stage(&name),
                );
            }
            Ok(StageSpec {
                name: name.clone(),
                uses,
                kind,
                template,
                needs,
                with,
                matrix,
                name_template: st.name.clone(),
                retries: st.retries,
                description: st.description.clone(),
                resources: match &st.resources {
                    None => ResourcesWire::default(),
                    Some(v) => parse_resources(
                        interpolate(v.clone(), &vars),
                        &file,
                        &source,
                        &["stages", name.as_str(), "resources"],
                        Some(&name),
                    )?,
                }
                .over(&default_resources),
                keep_partials: st.keep_partials.unwrap_or(1),
            })
        })();
        match resolved {
            Ok(s) => stages.push(s),
            Err(e) => errors.push(e),
        }
    }
    // Overrides come last: they win over templates and the file.
    for o in overrides {
        match stages.iter_mut().find(|s| s.name == o.stage) {
            Some(s) => set_path(&mut s.with, &o.key, o.value.clone()),
            None => {
                let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
                errors.push(
                    SpecError::new(
                        "<command line>",
                        format!(
                            "`-s {}.{}=…`: there is no stage `{}`",
                            o.stage,
                            o.key.join("."),
                            o.stage
                        ),
                    )
                    .hint_opt(
                        crate::util::did_you_mean(&o.stage, &names)
                            .map(|s| format!("did you mean `{s}`?"))
                            .or_else(|| Some(format!("stages: {}", names.join(", ")))),
                    ),
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    Ok(PipelineSpec {
        name: wire.name,
        description: wire.description,
        file,
        dir,
        project_root,
        workdir,
        source,
        executor: wire.executor,
        devices,
        stages,
    })
}

/// `devices:` as the `--devices` syntax: a string or number as is, a list joined by commas.
fn devices_list(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    };
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(one)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        other => one(other),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_template_ref(uses: &str) -> bool {
    uses.ends_with(".yaml") || uses.ends_with(".yml")
}

/// The nearest folder at or above `dir` that holds `stages/` or `datasets/`.
pub fn find_project_root(dir: &Path) -> PathBuf {
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.join("stages").is_dir() || p.join("datasets").is_dir() {
            return p.to_path_buf();
        }
        d = p.parent();
    }
    dir.to_path_buf()
}

fn find_template(uses: &str, dir: &Path, root: &Path) -> Option<PathBuf> {
    let p = Path::new(uses);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    [dir.join(p), root.join(p)]
        .into_iter()
        .find(|c| c.is_file())
        .map(|c| normalize(&c))
}

fn template_hint(uses: &str, root: &Path) -> Option<String> {
    let dir = root.join("stages");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| format!("stages/{}", e.file_name().to_string_lossy()))
        .filter(|n| is_template_ref(n))
        .collect();
    names.sort();
    match crate::util::did_you_mean(uses, &names) {
        Some(s) => Some(format!("did you mean `{s}`?")),
        None if names.is_empty() => Some(format!(
            "templates are looked up next to the pipeline and in {}",
            crate::util::display_path(&dir)
        )),
        None => Some(format!("templates: {}", names.join(", "))),
    }
}

/// Remove `.` and `..` components without touching the file system.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A `resources:` mapping after `${var}` interpolation, checked: typed fields and values
/// that are safe to write into a batch script (see [`wire::ResourcesWire::check`]).
fn parse_resources(
    v: Result<Value, (String, String)>,
    file: &Path,
    source: &str,
    at: &[&str],
    stage: Option<&str>,
) -> Result<ResourcesWire, SpecError> {
    let err = |msg: String, keys: &[&str]| {
        let path: Vec<&str> = at.iter().chain(keys).copied().collect();
        let e = SpecError::new(file, msg).at(locate::locate(source, &path));
        match stage {
            Some(s) => e.stage(s),
            None => e,
        }
    };
    let v = v.map_err(|(_, msg)| err(msg, &[]))?;
    let r: ResourcesWire = serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        let keys: Vec<&str> = if key == "." {
            vec![]
        } else {
            key.split('.').collect()
        };
        err(format!("`resources`: {}", e.into_inner()), &keys)
    })?;
    r.check().map_err(|(key, msg)| {
        err(msg, &[key]).hint(
            "Slurm values may hold letters, digits and `_ - . : , = + @ / % & | [ ] * !` only",
        )
    })?;
    Ok(r)
}

/// Deep merge: mappings merge key by key (recursively); anything else in `over` replaces
/// `base`. A key written with an explicit `null` replaces the base's value with null (the
/// documented "null: off", e.g. `grad_clip: null` over a template's clipping); an absent
/// `over` (null at the top) keeps `base`.
pub fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let merged = match (b.remove(&k), v) {
                    (_, Value::Null) => Value::Null,
                    (Some(bv), v) => merge(bv, v),
                    (None, v) => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (b, Value::Null) => b,
        (_, o) => o,
    }
}

/// Set `value` at a dotted key path inside a mapping, creating mappings on the way.
pub fn set_path(root: &mut Value, key: &[String], value: Value) {
    if !root.is_mapping() {
        *root = Value::Mapping(Default::default());
    }
    let map = root.as_mapping_mut().expect("just made a mapping");
    let k = Value::String(key[0].clone());
    if key.len() == 1 {
        map.insert(k, value);
    } else {
        let child = map.entry(k).or_insert(Value::Null);
        set_path(child, &key[1..], value);
    }
}

pub use crate::util::scalar_string;

/// Replace `${var}` in every string. A string that is exactly `${var}` takes the var's
/// typed value; `$${` stands for a literal `${`. Errors give (var name, message).
fn interpolate(v: Value, vars: &IndexMap<String, Value>) -> Result<Value, (String, String)> {
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !name.contains(['$', '{', '}']) {
                    return vars.get(name).cloned().ok_or_else(|| {
                        (name.to_string(), format!("unknown variable `${{{name}}}`"))
                    });
                }
            }
            Value::String(interpolate_str(&s, vars)?)
        }
        Value::Sequence(seq) => Value::Sequence(
            seq.into_iter()
                .map(|x| interpolate(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(m) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, x) in m {
                out.insert(k, interpolate(x, vars)?);
            }
            Value::Mapping(out)
        }
        other => other,
    })
}

fn interpolate_str(s: &str, vars: &IndexMap<String, Value>) -> Result<String, (String, String)> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t
                .find('}')
                .ok_or_else(|| (String::new(), format!("unclosed `${{` in `{s}`")))?;
            let name = &t[..end];
            let v = vars
                .get(name)
                .ok_or_else(|| (name.to_string(), format!("unknown variable `${{{name}}}`")))?;
            out.push_str(&scalar_string(v));
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> IndexMap<String, Value> {
        let mut v = IndexMap::new();
        v.insert("hi".into(), Value::from(256));
        v.insert("name".into(), Value::from("x"));
        v
    }

    #[test]
    fn whole_string_keeps_type() {
        let v = interpolate(Value::from("${hi}"), &vars()).unwrap();
        assert_eq!(v, Value::from(256));
        let v = interpolate(Value::from("run-${name}-${hi}"), &vars()).unwrap();
        assert_eq!(v, Value::from("run-x-256"));
        let v = interpolate(Value::from("echo $${HOME} $PATH"), &vars()).unwrap();
        assert_eq!(v, Value::from("echo ${HOME} $PATH"));
        assert!(interpolate(Value::from("${nope}"), &vars()).is_err());
    }

    #[test]
    fn deep_merge() {
        let a: Value = serde_yaml::from_str("{a: 1, b: {c: 2, d: 3}}").unwrap();
        let b: Value = serde_yaml::from_str("{b: {c: 5}, e: 6}").unwrap();
        let m: Value = serde_yaml::from_str("{a: 1, b: {c: 5, d: 3}, e: 6}").unwrap();
        assert_eq!(merge(a, b), m);
        // An explicit null switches a template's value off; a missing `with:` keeps all.
        let t: Value = serde_yaml::from_str("{grad_clip: 1.0, lr: 2}").unwrap();
        let p: Value = serde_yaml::from_str("{grad_clip: null}").unwrap();
        let m: Value = serde_yaml::from_str("{grad_clip: null, lr: 2}").unwrap();
        assert_eq!(merge(t.clone(), p), m);
        assert_eq!(merge(t.clone(), Value::Null), t);
    }

    #[test]
    fn override_parsing() {
        let o: Override = "train.sampler.steps=40".parse().unwrap();
        assert_eq!(o.stage, "train");
        assert_eq!(o.key, vec!["sampler", "steps"]);
        assert_eq!(o.value, Value::from(40));
        let o: Override = "a.b=hello world".parse().unwrap();
        assert_eq!(o.value, Value::from("hello world"));
        assert!("nodot=1".parse::<Override>().is_err());
    }
}
