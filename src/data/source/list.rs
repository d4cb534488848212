//! Listing a source: a folder of images (labels from class subfolders or a descriptor), an
//! EDM/RDM dataset zip (`dataset.json` labels), or WebDataset shards (member offsets).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::descriptor::Descriptor;
use crate::data::image::has_image_extension;
use crate::data::{tar, wds, DataError, Result};

use super::Item;

/// How a folder or zip source finds labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMode {
    /// Top-level folder names when every image sits in one and there are at least two
    /// of them (EDM's rule), otherwise unconditional.
    #[default]
    Auto,
    /// Top-level folder names, sorted, numbered from 0.
    Folders,
    /// Unconditional.
    None,
}

/// What a listing produced.
#[derive(Debug, Clone)]
pub struct Listing {
    pub items: Vec<Item>,
    pub classes: Option<Vec<String>>,
    /// Files skipped because their extension is not an image's.
    pub ignored: u64,
}

fn top_folder(rel: &str) -> Option<&str> {
    rel.split_once('/').map(|(top, _)| top)
}

/// A name with its label.
type Labelled = (String, Option<i64>);

/// Assign labels from top-level folders (or a descriptor's class ids).
fn label_by_folder(
    names: Vec<String>,
    mode: LabelMode,
    descriptor: Option<&Descriptor>,
    what: &str,
) -> Result<(Vec<Labelled>, Option<Vec<String>>)> {
    if let Some(d) = descriptor {
        let classes = d.class_names().map_err(DataError::Invalid)?;
        let index: HashMap<&str, i64> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as i64))
            .collect();
        let mut unknown = BTreeSet::new();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match top_folder(&n).and_then(|t| index.get(t)) {
                Some(&l) => out.push((n, Some(l))),
                None => {
                    unknown.insert(top_folder(&n).unwrap_or("(top level)").to_string());
                }
            }
        }
        if !unknown.is_empty() {
            let list: Vec<_> = unknown.iter().take(5).cloned().collect();
            return Err(DataError::Invalid(format!(
                "{what}: {} folder(s) are not classes of dataset `{}`: {}{}; \
                 remove them or fix the descriptor",
                unknown.len(),
                d.name,
                list.join(", "),
                if unknown.len() > 5 { ", ..." } else { "" }
            )));
        }
        return Ok((out, Some(classes)));
    }
    let tops: BTreeSet<&str> = names.iter().filter_map(|n| top_folder(n)).collect();
    let all_in_folders = names.iter().all(|n| top_folder(n).is_some());
    let labelled = match mode {
        LabelMode::None => false,
        LabelMode::Folders => {
            if !all_in_folders {
                let loose = names.iter().find(|n| top_folder(n).is_none()).expect("one");
                return Err(DataError::Invalid(format!(
                    "{what}: `labels: folders` needs every image inside a class folder, \
                     but `{loose}` is at the top level"
                )));
            }
            true
        }
        LabelMode::Auto => all_in_folders && tops.len() >= 2,
    };
    if !labelled {
        return Ok((names.into_iter().map(|n| (n, None)).collect(), None));
    }
    let classes: Vec<String> = tops.iter().map(|s| s.to_string()).collect();
    let index: HashMap<String, i64> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i as i64))
        .collect();
    let out = names
        .into_iter()
        .map(|n| {
            let l = index[top_folder(&n).expect("checked")];
            (n, Some(l))
        })
        .collect();
    Ok((out, Some(classes)))
}

/// List a folder of images recursively (hidden files and folders skipped), sorted by
/// relative path.
pub fn list_folder(
    root: &Path,
    mode: LabelMode,
    descriptor: Option<&Descriptor>,
) -> Result<Listing> {
    let meta = std::fs::metadata(root).map_err(DataError::io("read source folder", root))?;
    if !meta.is_dir() {
        return Err(DataError::Invalid(format!(
            "`{}` is not a folder; use source/zip for a zip file",
            root.display()
        )));
    }
    let mut names = Vec::new();
    let mut ignored = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(DataError::io("read folder", &dir))?;
        for entry in entries {
            let entry = entry.map_err(DataError::io("read folder", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                ignored += 1;
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // follow symlinks
            let Ok(meta) = std::fs::metadata(&path) else {
                ignored += 1;
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if has_image_extension(name) {
                let rel = path.strip_prefix(root).expect("under root");
                let rel: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
                names.push(rel.join("/"));
            } else {
                ignored += 1;
            }
        }
    }
    names.sort();
    let what = format!("source folder `{}`", root.display());
    let (labelled, classes) = label_by_folder(names, mode, descriptor, &what)?;
    let items = labelled
        .into_iter()
        .map(|(location, label)| Item {
            location,
            member: None,
            label,
            offset: None,
            size: None,
        })
        .collect();
    Ok(Listing {
        items,
        classes,
        ignored,
    })
}

/// EDM's `dataset.json`: `{"labels": [["00000/img00000000.png", 6], ...]}` or `null`.
#[derive(Deserialize)]
struct EdmLabels {
    labels: Option<Vec<(String, i64)>>,
}

/// List the images of an EDM/RDM dataset zip, sorted by member name. Labels come from
/// its `dataset.json` when it has them, else from folders like [`list_folder`].
pub fn list_zip(path: &Path, mode: LabelMode, descriptor: Option<&Descriptor>) -> Result<Listing> {
    let file = File::open(path).map_err(DataError::io("open zip", path))?;
    let bad = |e: zip::result::ZipError| {
        DataError::Invalid(format!(
            "`{}` is not a readable zip file: {e}",
            path.display()
        ))
    };
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
    let mut entries: Vec<(String, u64)> = Vec::new();
    let mut ignored = 0;
    let mut json_index = None;
    for i in 0..archive.len() {
        let name = archive
            .name_for_index(i)
            .expect("index in range")
            .map_err(bad)?
            .into_owned();
        if name.ends_with('/') {
            continue;
        }
        if name == "dataset.json" {
            json_index = Some(i);
        } else if has_image_extension(&name) {
            entries.push((name, i as u64));
        } else {
            ignored += 1;
        }
    }
    entries.sort();
    let what = format!("source zip `{}`", path.display());
    let edm = match json_index {
        Some(i) => {
            let mut text = String::new();
            archive
                .by_index(i)
                .map_err(bad)?
                .read_to_string(&mut text)
                .map_err(DataError::io("read dataset.json in", path))?;
            let parsed: EdmLabels = serde_json::from_str(&text).map_err(|e| {
                DataError::Invalid(format!("{what}: dataset.json is not EDM's format: {e}"))
            })?;
            parsed.labels
        }
        None => None,
    };
    if let (Some(labels), None) = (edm, descriptor) {
        if mode != LabelMode::None {
            let map: HashMap<String, i64> = labels.into_iter().collect();
            let n = map.values().copied().max().map_or(0, |m| m + 1);
            let mut items = Vec::with_capacity(entries.len());
            for (name, idx) in entries {
                let Some(&label) = map.get(&name) else {
                    return Err(DataError::Invalid(format!(
                        "{what}: dataset.json has no label for `{name}`"
                    )));
                };
                items.push(Item {
                    location: name,
                    member: None,
                    label: Some(label),
                    offset: Some(idx),
                    size: None,
                });
            }
            let classes = Some((0..n).map(|i| i.to_string()).collect());
            return Ok(Listing {
                items,
                classes,
                ignored,
            });
        }
    }
    let index: HashMap<String, u64> = entries.iter().cloned().collect();
    let names = entries.into_iter().map(|(n, _)| n).collect();
    let (labelled, classes) = label_by_folder(names, mode, descriptor, &what)?;
    let items = labelled
        .into_iter()
        .map(|(location, label)| Item {
            offset: Some(index[&location]),
            location,
            member: None,
            label,
            size: None,
        })
        .collect();
    Ok(Listing {
        items,
        classes,
        ignored,
    })
}

/// List the samples of local WebDataset shards (brace patterns), in archive order.
/// The image is the sample's `png`/`jpg`/`jpeg`/`webp` file (or, failing that, its
/// largest `R.png`-style file); the label is its `cls`.
pub fn list_webdataset(pattern: &str) -> Result<Listing> {
    let shards = wds::expand(pattern)?;
    let mut items = Vec::new();
    let mut ignored = 0;
    let mut max_label = -1;
    let mut any_label = false;
    for shard in &shards {
        let path = Path::new(shard);
        if !path.exists() {
            return Err(DataError::Invalid(format!(
                "shard `{shard}` (from pattern `{pattern}`) does not exist"
            )));
        }
        let members = tar::index_members(path)?;
        let mut file = File::open(path).map_err(DataError::io("open", path))?;
        // group consecutive members by key, as WebDataset does
        let mut groups: Vec<(String, Vec<(String, tar::Member)>)> = Vec::new();
        for m in members {
            let Some((key, ext)) = webdataset::core::base_plus_ext(&m.name) else {
                continue;
            };
            let (key, ext) = (key.to_string(), ext.to_ascii_lowercase());
            match groups.last_mut() {
                Some((k, fields)) if *k == key => fields.push((ext, m)),
                _ => groups.push((key, vec![(ext, m)])),
            }
        }
        for (key, fields) in groups {
            let exact = ["png", "jpg", "jpeg", "webp"]
                .iter()
                .find_map(|e| fields.iter().find(|(ext, _)| ext == e));
            let sized = || {
                fields
                    .iter()
                    .filter_map(|(ext, m)| {
                        let (r, e) = ext.split_once('.')?;
                        let r: u32 = r.parse().ok()?;
                        has_image_extension(&format!("x.{e}")).then_some((r, m))
                    })
                    .max_by_key(|(r, _)| *r)
                    .map(|(_, m)| m)
            };
            let Some(image) = exact.map(|(_, m)| m).or_else(sized) else {
                ignored += 1;
                continue;
            };
            let label = match fields.iter().find(|(ext, _)| ext == "cls") {
                Some((_, m)) => {
                    let bytes = tar::read_member(&mut file, path, m.offset, m.size)?;
                    let text = String::from_utf8_lossy(&bytes);
                    let l: i64 = text.trim().parse().map_err(|_| {
                        DataError::Invalid(format!(
                            "shard `{shard}`: `{key}.cls` is not an integer ({:?})",
                            text.trim()
                        ))
                    })?;
                    any_label = true;
                    max_label = max_label.max(l);
                    Some(l)
                }
                None => None,
            };
            items.push(Item {
                location: shard.clone(),
                member: Some(image.name.clone()),
                label,
                offset: Some(image.offset),
                size: Some(image.size),
            });
        }
    }
    if any_label && items.iter().any(|i| i.label.is_none()) {
        let missing = items.iter().find(|i| i.label.is_none()).expect("one");
        return Err(DataError::Invalid(format!(
            "shards `{pattern}` are partly labelled: `{}` in `{}` has no .cls file",
            missing.member.as_deref().unwrap_or(""),
            missing.location
        )));
    }
    let classes = any_label.then(|| (0..=max_label).map(|i| i.to_string()).collect());
    Ok(Listing {
        items,
        classes,
        ignored,
    })
}
