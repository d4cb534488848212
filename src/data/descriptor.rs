//! Dataset descriptors (`datasets/NAME.yaml`): where a dataset comes from, its licence,
//! its class-index mapping and the counts to expect.
//!
//! ```yaml
//! name: imagenet
//! description: ILSVRC-2012 ImageNet classification
//! homepage: https://image-net.org/
//! license: non-commercial research only
//! labels: folders                  # labels come from class folders named by `classes`
//! expected: { images: 1281167, classes: 1000 }
//! classes: [n01440764, n01443537]  # index = position ...
//! # classes: { cat: 0, dog: 1 }    # ... or an explicit mapping
//! ```
//! A source stage names a descriptor with `dataset: imagenet` (looked up as
//! `datasets/imagenet.yaml` under the project root) or a path to a YAML file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DataError, Result};

/// A dataset descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub citation: Option<String>,
    /// How labels are found in a folder source; only `folders` (class folders named by
    /// the class ids) exists today.
    #[serde(default)]
    pub labels: LabelSource,
    #[serde(default)]
    pub expected: Expected,
    pub classes: Classes,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSource {
    #[default]
    Folders,
}

/// Counts to expect; a mismatch is reported, not fatal (subsets are normal).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub images: Option<u64>,
    pub classes: Option<u64>,
}

/// Class ids in index order, or an explicit id → index map.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Classes {
    List(Vec<String>),
    Map(BTreeMap<String, u32>),
}

impl Descriptor {
    /// Read and check a descriptor file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(DataError::io("read dataset descriptor", path))?;
        let d: Descriptor = serde_yaml::from_str(&text).map_err(|e| {
            DataError::Invalid(format!("dataset descriptor `{}`: {e}", path.display()))
        })?;
        d.class_names().map_err(|m| {
            DataError::Invalid(format!("dataset descriptor `{}`: {m}", path.display()))
        })?;
        Ok(d)
    }

    /// `name_or_path`: a path to a YAML file, or a name looked up in `root/datasets/`.
    pub fn find(root: &Path, name_or_path: &str) -> Result<(PathBuf, Self)> {
        let direct = Path::new(name_or_path);
        let path = if name_or_path.ends_with(".yaml") || name_or_path.ends_with(".yml") {
            if direct.is_absolute() {
                direct.to_path_buf()
            } else {
                root.join(direct)
            }
        } else {
            root.join("datasets").join(format!("{name_or_path}.yaml"))
        };
        if !path.exists() {
            return Err(DataError::Invalid(format!(
                "dataset descriptor `{name_or_path}` not found (looked for `{}`); \
                 descriptors live in `datasets/NAME.yaml` under the project root",
                path.display()
            )));
        }
        let d = Self::load(&path)?;
        Ok((path, d))
    }

    /// Class ids in index order (index i = position i). A map must use the indices
    /// 0..n exactly once.
    pub fn class_names(&self) -> Result<Vec<String>, String> {
        let names = match &self.classes {
            Classes::List(list) => list.clone(),
            Classes::Map(map) => {
                let mut names = vec![None; map.len()];
                for (id, &i) in map {
                    match names.get_mut(i as usize) {
                        Some(slot @ None) => *slot = Some(id.clone()),
                        Some(Some(other)) => {
                            return Err(format!("classes `{other}` and `{id}` both have index {i}"))
                        }
                        None => {
                            return Err(format!(
                                "class `{id}` has index {i}, but indices must be 0..{}",
                                map.len()
                            ))
                        }
                    }
                }
                names.into_iter().map(|n| n.expect("all filled")).collect()
            }
        };
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n) {
                return Err(format!("class `{n}` is listed twice"));
            }
        }
        if names.is_empty() {
            return Err("`classes` is empty".to_string());
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_map_forms() {
        let d: Descriptor = serde_yaml::from_str("name: x\nclasses: [b, a]").unwrap();
        assert_eq!(d.class_names().unwrap(), ["b", "a"]);
        let d: Descriptor = serde_yaml::from_str("name: x\nclasses: {cat: 1, dog: 0}").unwrap();
        assert_eq!(d.class_names().unwrap(), ["dog", "cat"]);
        let d: Descriptor = serde_yaml::from_str("name: x\nclasses: {cat: 1, dog: 1}").unwrap();
        assert!(d.class_names().unwrap_err().contains("index 1"));
        let d: Descriptor = serde_yaml::from_str("name: x\nclasses: [a, a]").unwrap();
        assert!(d.class_names().unwrap_err().contains("twice"));
        assert!(serde_yaml::from_str::<Descriptor>("name: x\nclases: [a]").is_err());
    }

    #[test]
    fn shipped_imagenet_descriptor() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (_, d) = Descriptor::find(root, "imagenet").unwrap();
        let names = d.class_names().unwrap();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "n01440764");
        assert_eq!(names[999], "n15075141");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted, names,
            "ImageNet's standard order is the sorted synset order"
        );
        assert_eq!(d.expected.images, Some(1_281_167));
        let (_, e) = Descriptor::find(root, "example").unwrap();
        assert_eq!(e.class_names().unwrap(), ["cat", "dog"]);
    }
}
