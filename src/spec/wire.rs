//! The YAML as written: strict serde structs (`deny_unknown_fields`), so that a typo is
//! an error with a line number instead of a silently ignored key.

use std::fmt;
use std::marker::PhantomData;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineWire {
    /// The pipeline's name (records and `relay.lock` are keyed by it).
    pub name: String,
    /// One line for `relay plan` and model cards.
    #[serde(default)]
    pub description: Option<String>,
    /// Where artifacts live, one folder per stage (relative to the pipeline file).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Values for `${name}` interpolation.
    #[serde(default)]
    pub vars: UniqueMap<serde_yaml::Value>,
    /// `local` (default) or `slurm`: where stages run (`--executor` overrides it).
    #[serde(default)]
    pub executor: Option<String>,
    /// The devices `relay run` hands out: `cpu*4`, `0,1,2,3`, or a list `[0, 1]`
    /// (`--devices` overrides it).
    #[serde(default)]
    pub devices: Option<serde_yaml::Value>,
    /// Cluster resources every stage gets unless it says otherwise ([`ResourcesWire`], read
    /// after `${var}` interpolation).
    #[serde(default)]
    pub resources: Option<serde_yaml::Value>,
    /// The stages, in the order written.
    pub stages: UniqueMap<StageWire>,
}

/// One stage as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageWire {
    /// A built-in kind (`shard`) or a template file (`stages/edm-adm-64.yaml`).
    pub uses: String,
    /// Upstream stages.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Parameters, deep-merged over the template's.
    #[serde(default)]
    pub with: serde_yaml::Value,
    /// Fan-out: every combination of these values becomes an instance.
    #[serde(default)]
    pub matrix: Option<UniqueMap<Vec<serde_yaml::Value>>>,
    /// Instance name template for a matrix stage, e.g. `relay-{block_scale}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Cluster resources of this stage (over the pipeline's `resources:`), read after
    /// `${var}` interpolation.
    #[serde(default)]
    pub resources: Option<serde_yaml::Value>,
    /// How many interrupted runs of other fingerprints a resumable stage keeps (default 1);
    /// `relay gc` removes them.
    #[serde(default)]
    pub keep_partials: Option<usize>,
    /// Retry a failed run this many times (flaky external commands).
    #[serde(default)]
    pub retries: u32,
    /// One line for `relay plan`.
    #[serde(default)]
    pub description: Option<String>,
}

/// What a stage asks of a cluster scheduler (Slurm); ignored by the local executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesWire {
    /// GPUs per node.
    pub gpus: Option<u32>,
    /// Nodes (multi-node training).
    pub nodes: Option<u32>,
    /// CPUs per task.
    pub cpus: Option<u32>,
    /// Memory per node, as Slurm writes it (`64G`).
    pub mem: Option<String>,
    /// Wall-time limit (`2-00:00:00`).
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    /// How many array tasks of a sampling stage may run at once (`--array=...%P`).
    pub array_parallel: Option<u32>,
}

impl ResourcesWire {
    /// Refuse values that could not be written safely into an `#SBATCH` line: each text
    /// field may hold only characters Slurm's own syntax uses (no spaces, quotes, `$`,
    /// backquotes or newlines). Returns the offending key and a message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let safe = |c: char| c.is_ascii_alphanumeric() || "_-.:,=+@/%&|[]*!".contains(c);
        for (key, v) in [
            ("mem", &self.mem),
            ("time", &self.time),
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("constraint", &self.constraint),
        ] {
            if let Some(v) = v {
                if v.is_empty() || !v.chars().all(safe) {
                    return Err((
                        key,
                        format!("resources `{key}`: {v:?} is not a valid Slurm value"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `self`'s fields where set, else `base`'s.
    pub fn over(&self, base: &ResourcesWire) -> ResourcesWire {
        ResourcesWire {
            gpus: self.gpus.or(base.gpus),
            nodes: self.nodes.or(base.nodes),
            cpus: self.cpus.or(base.cpus),
            mem: self.mem.clone().or_else(|| base.mem.clone()),
            time: self.time.clone().or_else(|| base.time.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
            account: self.account.clone().or_else(|| base.account.clone()),
            qos: self.qos.clone().or_else(|| base.qos.clone()),
            constraint: self.constraint.clone().or_else(|| base.constraint.clone()),
            array_parallel: self.array_parallel.or(base.array_parallel),
        }
    }
}

/// A template under `stages/`: a kind plus default parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateWire {
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub with: serde_yaml::Value,
}

/// An insertion-ordered map that rejects duplicate keys (serde's maps keep the last one
/// silently, which would hide a duplicated stage name).
#[derive(Debug, Clone)]
pub struct UniqueMap<T>(pub IndexMap<String, T>);

impl<T> Default for UniqueMap<T> {
    fn default() -> Self {
        Self(IndexMap::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = IndexMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate name `{k}`: every name must be unique"
                        )));
                    }
                    let v = m.next_value::<T>()?;
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}
