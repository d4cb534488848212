//! Fan-out for ablations: `matrix: { block_scale: [0.0, 0.15], steps: [18, 40] }` expands a
//! stage into one instance per combination, named `stage@block_scale=0.15,steps=18` or by
//! the stage's `name:` template (`relay-{block_scale}-{steps}`).

use serde_yaml::Value;

use crate::spec::{scalar_string, set_path, StageSpec};

/// Instance names become folder names (`workdir/<name>/`, state and lock files): one safe
/// path component — letters, digits and `_ - . @ = , +`, not starting with `.` or `-`, at
/// most 200 characters — so that no matrix value or `name:` template can reach outside the
/// workdir (`../x`) or into `.relay/`.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_-.@=,+".contains(c);
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > 200 {
        Some("is longer than 200 characters".into())
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("starts with `.` or `-`".into())
    } else {
        name.chars()
            .find(|&c| !ok_char(c))
            .map(|c| format!("contains {c:?}"))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!(
            "instance name `{name}` {p}: names become folders in the workdir; use letters, digits and `_ - . @ = , +` (give the stage a `name:` template, e.g. `name: sweep-{{KEY}}`, when the matrix values hold other characters)"
        )),
    }
}

/// The instances of a stage as (name, parameters); a stage without a matrix is one instance.
pub fn expand(st: &StageSpec) -> Result<Vec<(String, Value)>, String> {
    let Some(matrix) = &st.matrix else {
        return Ok(vec![(st.name.clone(), st.with.clone())]);
    };
    if matrix.is_empty() {
        return Err("`matrix:` is empty; give at least one key with a list of values".into());
    }
    if let Some((k, _)) = matrix.iter().find(|(_, vs)| vs.is_empty()) {
        return Err(format!("`matrix.{k}` has no values"));
    }
    let keys: Vec<&String> = matrix.keys().collect();
    let mut combos: Vec<Vec<&Value>> = vec![vec![]];
    for k in &keys {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                matrix[*k].iter().map(move |v| {
                    let mut c = c.clone();
                    c.push(v);
                    c
                })
            })
            .collect();
    }
    let mut out = Vec::with_capacity(combos.len());
    for combo in combos {
        let mut params = st.with.clone();
        let mut parts = Vec::new();
        let mut name = st.name_template.clone();
        for (k, v) in keys.iter().zip(&combo) {
            let path: Vec<String> = k.split('.').map(str::to_string).collect();
            set_path(&mut params, &path, (*v).clone());
            let text = scalar_string(v);
            parts.push(format!("{k}={text}"));
            if let Some(n) = &mut name {
                *n = n.replace(&format!("{{{k}}}"), &text);
            }
        }
        let name = match name {
            Some(n) => {
                if n.contains(['{', '}']) {
                    return Err(format!(
                        "instance name `{n}`: the `name:` template refers to a key that is not in `matrix:`"
                    ));
                }
                n
            }
            None => format!("{}@{}", st.name, parts.join(",")),
        };
        check_instance_name(&name)?;
        out.push((name, params));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    fn stage(name_template: Option<&str>) -> StageSpec {
        let mut m = IndexMap::new();
        m.insert(
            "block_scale".to_string(),
            vec![Value::from(0.0), Value::from(0.15)],
        );
        m.insert("steps".to_string(), vec![Value::from(18)]);
        StageSpec {
            name: "relay".into(),
            uses: "command".into(),
            kind: "command".into(),
            template: None,
            needs: vec![],
            with: serde_yaml::from_str("{run: x}").unwrap(),
            matrix: Some(m),
            name_template: name_template.map(str::to_string),
            retries: 0,
            keep_partials: 1,
            description: None,
            resources: Default::default(),
        }
    }

    #[test]
    fn expands_every_combination() {
        let inst = expand(&stage(None)).unwrap();
        let names: Vec<&str> = inst.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "relay@block_scale=0.0,steps=18",
                "relay@block_scale=0.15,steps=18"
            ]
        );
        assert_eq!(inst[1].1["block_scale"], Value::from(0.15));
        assert_eq!(inst[1].1["run"], Value::from("x"));
    }

    #[test]
    fn name_template() {
        let inst = expand(&stage(Some("relay-{block_scale}"))).unwrap();
        assert_eq!(inst[0].0, "relay-0.0");
        assert!(expand(&stage(Some("relay-{nope}"))).is_err());
    }
}
