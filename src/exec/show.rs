//! `relay show`: an experiment table over the run records, like `dvc exp show`.
//!
//! 1. Rows: one per evaluated stage instance — every `sample`-like input of every `metrics`
//!    stage (a matrix of three sample instances gives three rows). A pipeline without a
//!    `metrics` stage gets one row per instance of its matrix stages, or per stage.
//! 2. Columns: the row's name; the matrix values of the instances it was built from; the
//!    parameters (`stage.key`) of those instances that differ between rows; then the
//!    metrics, the cost (training images seen and device-hours over everything the row was
//!    built from, from the last successful run of each) and the status of the row's run.
//! 3. By default only matrix and parameter columns whose values differ are kept; `all`
//!    keeps every one.
//!
//! Pure: a plan and its records in, a [`Table`] out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::base::record::Record;
use crate::plan::Plan;

/// Metric keys in the order shown.
const METRICS: [&str; 5] = ["fid", "sfid", "inception_score", "precision", "recall"];

/// The table: column names and one value per column per row (`null`: no value).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

struct Row {
    name: String,
    /// Node indices the row was built from (the instance and everything upstream).
    closure: Vec<usize>,
    metrics: Map<String, Value>,
    status: String,
}

fn closure(plan: &Plan, start: &[usize]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = start.to_vec();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(&plan.nodes[i].needs);
        }
    }
    seen.into_iter().collect()
}

/// Flatten a YAML mapping into dotted keys with scalar values.
fn flatten(prefix: &str, v: &serde_yaml::Value, out: &mut BTreeMap<String, Value>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let k = crate::spec::scalar_string(k);
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(
                prefix.to_string(),
                serde_json::to_value(other).unwrap_or(Value::Null),
            );
        }
    }
}

fn get_path<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a serde_yaml::Value> {
    key.split('.').try_fold(v, |v, k| v.get(k))
}

/// Build the table of `plan` from `records` (oldest first).
pub fn table(plan: &Plan, records: &[Record], all: bool) -> Table {
    let last = |name: &str| records.iter().rev().find(|r| r.stage == name);
    let last_ok = |name: &str| {
        records
            .iter()
            .rev()
            .find(|r| r.stage == name && r.status == "ok")
    };
    let status = |name: &str| last(name).map_or("never".to_string(), |r| r.status.clone());

    // 1. Rows.
    let mut rows = Vec::new();
    for (m, node) in plan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.kind.name() == "metrics")
    {
        let results = last_ok(&node.name)
            .and_then(|r| r.info.get("results"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for &i in node
            .needs
            .iter()
            .filter(|&&i| plan.nodes[i].kind.name() == "sample")
        {
            let name = plan.nodes[i].name.clone();
            let metrics = results
                .get(&name)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let mut c = closure(plan, &[i]);
            c.push(m);
            rows.push(Row {
                name,
                closure: c,
                metrics,
                status: status(&node.name),
            });
        }
    }
    if rows.is_empty() {
        let matrix: Vec<usize> = (0..plan.nodes.len())
            .filter(|&i| {
                plan.spec
                    .stages
                    .iter()
                    .any(|s| s.name == plan.nodes[i].stage && s.matrix.is_some())
            })
            .collect();
        let pick = if matrix.is_empty() {
            plan.order.clone()
        } else {
            matrix
        };
        for i in pick {
            let name = plan.nodes[i].name.clone();
            rows.push(Row {
                closure: closure(plan, &[i]),
                metrics: Map::new(),
                status: status(&name),
                name,
            });
        }
    }

    // 2. Matrix values and parameters of each row's closure.
    let mut matrix_cols: Vec<BTreeMap<String, Value>> = Vec::new();
    let mut param_cols: Vec<BTreeMap<String, Value>> = Vec::new();
    for row in &rows {
        let (mut mx, mut ps) = (BTreeMap::new(), BTreeMap::new());
        for &i in &row.closure {
            let node = &plan.nodes[i];
            let spec = plan.spec.stages.iter().find(|s| s.name == node.stage);
            if let Some(matrix) = spec.and_then(|s| s.matrix.as_ref()) {
                for k in matrix.keys() {
                    let v = get_path(&node.params, k)
                        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null));
                    mx.insert(k.clone(), v.unwrap_or(Value::Null));
                }
            }
            let mut flat = BTreeMap::new();
            flatten("", &node.params, &mut flat);
            for (k, v) in flat {
                ps.insert(format!("{}.{k}", node.stage), v);
            }
        }
        matrix_cols.push(mx);
        param_cols.push(ps);
    }
    let keep = |cols: &[BTreeMap<String, Value>], skip: &BTreeSet<String>| -> Vec<String> {
        let names: BTreeSet<String> = cols.iter().flat_map(|c| c.keys().cloned()).collect();
        names
            .into_iter()
            .filter(|k| !skip.contains(k))
            .filter(|k| {
                let vals: BTreeSet<String> = cols
                    .iter()
                    .map(|c| c.get(k).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                all || vals.len() > 1
            })
            .collect()
    };
    let mkeys = keep(&matrix_cols, &BTreeSet::new());
    // A parameter set by the matrix is shown once, as its matrix column.
    let matrix_params: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| r.closure.iter())
        .flat_map(|&i| {
            let node = &plan.nodes[i];
            plan.spec
                .stages
                .iter()
                .find(|s| s.name == node.stage)
                .and_then(|s| s.matrix.as_ref())
                .map(|m| {
                    m.keys()
                        .map(|k| format!("{}.{k}", node.stage))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let pkeys = keep(&param_cols, &matrix_params);
    let present: Vec<&str> = METRICS
        .iter()
        .copied()
        .filter(|m| rows.iter().any(|r| r.metrics.contains_key(*m)))
        .collect();

    // 3. Cells.
    let mut columns = vec!["stage".to_string()];
    columns.extend(mkeys.iter().cloned());
    columns.extend(pkeys.iter().cloned());
    columns.extend(present.iter().map(|s| s.to_string()));
    columns.extend(["count", "images_seen", "device_hours", "status"].map(String::from));
    let mut out = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut cells = vec![Value::from(row.name.clone())];
        cells.extend(
            mkeys
                .iter()
                .map(|k| matrix_cols[r].get(k).cloned().unwrap_or(Value::Null)),
        );
        cells.extend(
            pkeys
                .iter()
                .map(|k| param_cols[r].get(k).cloned().unwrap_or(Value::Null)),
        );
        cells.extend(
            present
                .iter()
                .map(|m| row.metrics.get(*m).cloned().unwrap_or(Value::Null)),
        );
        cells.push(row.metrics.get("count").cloned().unwrap_or(Value::Null));
        let recs: Vec<&Record> = row
            .closure
            .iter()
            .filter_map(|&i| last_ok(&plan.nodes[i].name))
            .collect();
        let seen: u64 = recs
            .iter()
            .filter(|r| r.kind == "train")
            .filter_map(|r| r.images)
            .sum();
        let hours: f64 = recs.iter().map(|r| r.device_hours).sum();
        cells.push(if seen > 0 {
            Value::from(seen)
        } else {
            Value::Null
        });
        cells.push(Value::from(hours));
        cells.push(Value::from(row.status.clone()));
        out.push(cells);
    }
    Table { columns, rows: out }
}

/// A cell as text: fractional numbers with 4 decimals, `-` for none.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

impl Table {
    /// Aligned columns for the terminal.
    pub fn text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&self.columns)
                    .map(|(v, _)| cell_text(v))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |vals: &[String]| {
            vals.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut s = line(&self.columns);
        s.push('\n');
        for r in &cells {
            s.push_str(&line(r));
            s.push('\n');
        }
        s
    }

    /// One JSON object per row.
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    Value::Object(
                        self.columns
                            .iter()
                            .cloned()
                            .zip(r.iter().cloned())
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    /// CSV with a header line (RFC 4180 quoting).
    pub fn csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = self
            .columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .map(|v| match v {
                    Value::Null => String::new(),
                    Value::String(s) => quote(s),
                    other => quote(&other.to_string()),
                })
                .collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }
}
