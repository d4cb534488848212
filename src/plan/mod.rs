//! What we will do: a validated DAG of stage instances.
//!
//! [`Plan::from_spec`] is where every validation error comes from:
//! 1. matrix stages expand into named instances;
//! 2. each instance's kind is found (did-you-mean for typos) and checks its parameters;
//! 3. `needs:` resolve to instances (a matrix stage's name means all its instances);
//! 4. duplicate names and cycles are rejected (a cycle is printed as `a -> b -> a`).
//!
//! After this the executor never asks whether the graph is valid.

pub mod graph;
pub mod matrix;

use std::sync::Arc;

use serde_yaml::Value;

use crate::spec::{locate, PipelineSpec, SpecError, SpecErrors};
use crate::stage::{find_kind, kind_names, StageKind};
use crate::util::did_you_mean;

/// One stage instance.
#[derive(Clone)]
pub struct Node {
    /// Instance name (`relay` or `relay@block_scale=0.15,steps=18`).
    pub name: String,
    /// The declared stage it came from.
    pub stage: String,
    pub kind: Arc<dyn StageKind>,
    /// Resolved parameters.
    pub params: Value,
    /// Indices of the nodes it needs, in `needs:` order.
    pub needs: Vec<usize>,
    pub retries: u32,
    /// Interrupted runs of other fingerprints kept (resumable kinds).
    pub keep_partials: usize,
    pub description: Option<String>,
    /// Cluster resources (Slurm executor).
    pub resources: crate::spec::wire::ResourcesWire,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("needs", &self.needs)
            .finish()
    }
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: PipelineSpec,
    pub nodes: Vec<Node>,
    /// Topological order (declaration order where the edges allow).
    pub order: Vec<usize>,
}

impl Plan {
    pub fn from_spec(spec: PipelineSpec) -> Result<Plan, SpecErrors> {
        let file = spec.file.clone();
        let src = spec.source.clone();
        let mut errors = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        // Needs as written, per node, resolved once every node exists.
        let mut wanted: Vec<Vec<String>> = Vec::new();

        // 1-2. Instances, kinds and parameters.
        for st in &spec.stages {
            let Some(kind) = find_kind(&st.kind) else {
                let (f, pos) = match &st.template {
                    Some(t) => (
                        t.clone(),
                        std::fs::read_to_string(t)
                            .ok()
                            .and_then(|s| locate::locate(&s, &["kind"])),
                    ),
                    None => (
                        file.clone(),
                        locate::locate(&src, &["stages", &st.name, "uses"]),
                    ),
                };
                let names = kind_names();
                errors.push(
                    SpecError::new(f, format!("unknown stage kind `{}`", st.kind))
                        .at(pos)
                        .stage(&st.name)
                        .hint(match did_you_mean(&st.kind, &names) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "built-in kinds: {}; or a template file such as `stages/NAME.yaml`",
                                names.join(", ")
                            ),
                        }),
                );
                continue;
            };
            let instances = match matrix::expand(st) {
                Ok(i) => i,
                Err(msg) => {
                    errors.push(
                        SpecError::new(&file, msg)
                            .at(locate::locate(&src, &["stages", &st.name, "matrix"]))
                            .stage(&st.name),
                    );
                    continue;
                }
            };
            for (name, params) in instances {
                if let Err(e) = kind.check(&params) {
                    errors.push(param_error(&spec, st, &name, e));
                    continue;
                }
                nodes.push(Node {
                    name,
                    stage: st.name.clone(),
                    kind: kind.clone(),
                    params,
                    needs: Vec::new(),
                    retries: st.retries,
                    keep_partials: st.keep_partials,
                    description: st.description.clone(),
                    resources: st.resources.clone(),
                });
                wanted.push(st.needs.clone());
            }
        }

        // 4a. Duplicate instance names (a matrix name template can collide).
        for i in 0..nodes.len() {
            if nodes[..i].iter().any(|n| n.name == nodes[i].name) {
                errors.push(
                    SpecError::new(&file, format!("duplicate stage name `{}`", nodes[i].name))
                        .at(locate::locate(&src, &["stages", &nodes[i].stage]))
                        .stage(&nodes[i].stage)
                        .hint("give every stage (and matrix instance) its own name"),
                );
            }
        }

        // 3. Needs.
        let all_names: Vec<String> = spec.stages.iter().map(|s| s.name.clone()).collect();
        for (i, needs) in wanted.iter().enumerate() {
            let mut resolved = Vec::new();
            for need in needs {
                let hits: Vec<usize> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.name == *need || n.stage == *need)
                    .map(|(j, _)| j)
                    .collect();
                if hits.is_empty() {
                    let known = spec.stages.iter().any(|s| s.name == *need);
                    if known {
                        // The needed stage itself failed validation; its error is reported.
                        continue;
                    }
                    let mut candidates = all_names.clone();
                    candidates.extend(nodes.iter().map(|n| n.name.clone()));
                    errors.push(
                        SpecError::new(&file, format!("needs unknown stage `{need}`"))
                            .at(locate::locate_value(
                                &src,
                                &["stages", &nodes[i].stage, "needs"],
                                need,
                            ))
                            .stage(&nodes[i].stage)
                            .hint(match did_you_mean(need, &candidates) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!("stages: {}", all_names.join(", ")),
                            }),
                    );
                }
                for j in hits {
                    if !resolved.contains(&j) {
                        resolved.push(j);
                    }
                }
            }
            nodes[i].needs = resolved;
        }

        // Kind-specific checks that need to know the inputs (e.g. `{stage}` placeholders).
        for node in &nodes {
            let inputs: Vec<(&str, &str)> = node
                .needs
                .iter()
                .map(|&j| (nodes[j].name.as_str(), nodes[j].stage.as_str()))
                .collect();
            if let Err(e) = node.kind.check_inputs(&node.params, &inputs) {
                let st = spec
                    .stages
                    .iter()
                    .find(|s| s.name == node.stage)
                    .expect("node of a stage");
                errors.push(param_error(&spec, st, &node.name, e));
            }
        }

        if !errors.is_empty() {
            return Err(SpecErrors(errors));
        }

        // 4b. Cycles.
        let deps: Vec<Vec<usize>> = nodes.iter().map(|n| n.needs.clone()).collect();
        let order = match (graph::Graph { deps: &deps }).order() {
            Ok(o) => o,
            Err(cycle) => {
                let path: Vec<&str> = cycle.iter().map(|&i| nodes[i].name.as_str()).collect();
                let first = &nodes[cycle[0]];
                return Err(SpecError::new(&file, format!("cycle in `needs`: {}", path.join(" -> ")))
                    .at(locate::locate(&src, &["stages", &first.stage, "needs"]))
                    .stage(&first.stage)
                    .hint("a stage cannot need itself, directly or through others; remove one of these edges")
                    .into());
            }
        };
        Ok(Plan { spec, nodes, order })
    }

    /// The index of a node by instance name, or every instance of a declared stage.
    pub fn select(&self, name: &str) -> Result<Vec<usize>, SpecError> {
        let hits: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.name == name || n.stage == name)
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(SpecError::new(
                "<command line>",
                format!("there is no stage `{name}` in this pipeline"),
            )
            .hint(match did_you_mean(name, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("stages: {}", names.join(", ")),
            }));
        }
        Ok(hits)
    }

    pub fn deps(&self) -> Vec<Vec<usize>> {
        self.nodes.iter().map(|n| n.needs.clone()).collect()
    }

    /// The DAG in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut s = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
            self.spec.name
        );
        for &i in &self.order {
            let n = &self.nodes[i];
            s += &format!(
                "  \"{}\" [label=\"{}\\n({})\"];\n",
                n.name,
                n.name,
                n.kind.name()
            );
        }
        for &i in &self.order {
            for &d in &self.nodes[i].needs {
                s += &format!(
                    "  \"{}\" -> \"{}\";\n",
                    self.nodes[d].name, self.nodes[i].name
                );
            }
        }
        s + "}\n"
    }

    /// The DAG as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let id = |i: usize| format!("n{i}");
        let mut s = String::from("flowchart LR\n");
        for &i in &self.order {
            let n = &self.nodes[i];
            s += &format!("  {}[\"{}<br/>({})\"]\n", id(i), n.name, n.kind.name());
        }
        for &i in &self.order {
            for &d in &self.nodes[i].needs {
                s += &format!("  {} --> {}\n", id(d), id(i));
            }
        }
        s
    }
}

/// A kind's parameter error, placed at the key in the pipeline file (or its template).
fn param_error(
    spec: &PipelineSpec,
    st: &crate::spec::StageSpec,
    instance: &str,
    e: crate::stage::ParamError,
) -> SpecError {
    let keys: Vec<&str> = e
        .key
        .as_deref()
        .map(|k| k.split('.').collect())
        .unwrap_or_default();
    let mut path: Vec<&str> = vec!["stages", &st.name, "with"];
    path.extend(keys.iter().copied());
    // Where the key is written: the pipeline, else the template, else the stage's `with:`.
    let in_template = st.template.as_ref().and_then(|t| {
        let text = std::fs::read_to_string(t).ok()?;
        let mut tp = vec!["with"];
        tp.extend(keys.iter().copied());
        locate::locate_full(&text, &tp).map(|pos| (t.clone(), pos))
    });
    let (file, pos) = match (locate::locate_full(&spec.source, &path), in_template) {
        (Some(pos), _) => (spec.file.clone(), Some(pos)),
        (None, Some((t, pos))) => (t, Some(pos)),
        (None, None) => (spec.file.clone(), locate::locate(&spec.source, &path)),
    };
    let msg = match &e.key {
        Some(k)
            if !e
                .message
                .contains(&format!("`{}`", k.rsplit('.').next().unwrap_or(k))) =>
        {
            format!("parameter `{k}`: {}", e.message)
        }
        _ => e.message.clone(),
    };
    SpecError::new(file, format!("{msg} (kind `{}`)", st.kind))
        .at(pos)
        .stage(instance)
        .hint_opt(e.hint)
}
