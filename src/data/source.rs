//! What a source stage found, and how `shard` reads it: the hand-off between the two.
//!
//! A source stage does the cheap part: it lists its input and writes two files into its
//! output folder,
//! * `source.json` ([`SourceInfo`]): the kind, the root path, the transform and
//!   resolution to apply, the class names (index order) or none, the item count;
//! * `index.parquet` ([`crate::manifest::index_schema`]): one row per item in a stable
//!   order — sorted relative paths (folder), sorted member names (zip), archive order
//!   (WebDataset, with byte offsets so that `shard` can read items in any order).
//!
//! `shard` does the expensive part (decode, transform, encode) in parallel, reading
//! items through [`Source::fetch`] in its shuffled order. `source/shapes` writes no
//! index: its items are rendered on demand from `(seed, index)`.
//!
//! Holding the index in memory costs ~100 bytes per item (≈130 MB for ImageNet's 1.28M
//! images); images themselves are never held beyond one batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::descriptor::Descriptor;
use super::image::has_image_extension;
use super::transform::{Resolution, Transform};
use super::{shapes, tar, wds, DataError, Result};
use crate::manifest::{index_schema, Cell, RowReader, TableWriter};

pub const SOURCE_FILE: &str = "source.json";
pub const INDEX_FILE: &str = "index.parquet";
const FORMAT: u32 = 1;

/// Which kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Folder,
    Zip,
    Webdataset,
    Shapes,
}

/// `source.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub format: u32,
    pub kind: SourceKind,
    /// The folder (folder), the zip file (zip); absent for WebDataset (absolute shard
    /// paths are in the index) and shapes.
    pub root: Option<PathBuf>,
    pub transform: Transform,
    pub resolution: Option<Resolution>,
    /// Class names in index order; `None` for an unconditional dataset.
    pub classes: Option<Vec<String>>,
    pub count: u64,
    /// The dataset descriptor used, if any.
    #[serde(default)]
    pub dataset: Option<String>,
    /// `source/shapes` only.
    #[serde(default)]
    pub shapes: Option<ShapesSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapesSpec {
    pub seed: u64,
    pub classes: usize,
    pub resolution: u32,
}

/// One row of `index.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Relative path (folder), member name (zip) or shard path (WebDataset).
    pub location: String,
    /// The sample key inside a WebDataset shard.
    pub member: Option<String>,
    pub label: Option<i64>,
    /// Zip entry number, or byte offset inside a tar shard.
    pub offset: Option<u64>,
    pub size: Option<u64>,
}

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

/// Write `source.json` and `index.parquet` into `out`.
pub fn write_source(out: &Path, info: &SourceInfo, items: &[Item]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(DataError::io("create output folder", out))?;
    if info.kind != SourceKind::Shapes {
        let mut w = TableWriter::create(&out.join(INDEX_FILE), index_schema())?;
        for it in items {
            w.push(vec![
                Cell::Str(it.location.clone()),
                it.member.clone().map_or(Cell::Null, Cell::Str),
                it.label.into(),
                it.offset.into(),
                it.size.into(),
            ])?;
        }
        w.finish()?;
    }
    let json = serde_json::to_vec_pretty(info).expect("serialisable");
    write_atomic(&out.join(SOURCE_FILE), &json)
}

/// Write a small file atomically ([`crate::util::write_atomic`]: unique temporary
/// name, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::write_atomic(path, bytes).map_err(DataError::io("write", path))
}

/// What `fetch` returns: encoded bytes, or pixels for generated sources.
pub enum Fetched {
    Bytes(Vec<u8>),
    Pixels(RgbImage),
}

/// A source stage's output, opened for reading by `shard`.
pub struct Source {
    pub info: SourceInfo,
    pub items: Vec<Item>,
    zips: Mutex<Vec<zip::ZipArchive<BufReader<File>>>>,
}

impl Source {
    /// Open the output folder of a source stage.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SOURCE_FILE);
        let text = std::fs::read(&path).map_err(|source| DataError::Io {
            op: "read (is the upstream stage a source/* stage?)",
            path: path.clone(),
            source,
        })?;
        let info: SourceInfo = serde_json::from_slice(&text)
            .map_err(|e| DataError::Invalid(format!("`{}`: {e}", path.display())))?;
        if info.format != FORMAT {
            return Err(DataError::Invalid(format!(
                "`{}` has format {}, this relay reads format {FORMAT}; rerun the source stage",
                path.display(),
                info.format
            )));
        }
        let items = if info.kind == SourceKind::Shapes {
            Vec::new()
        } else {
            let mut items = Vec::with_capacity(info.count as usize);
            for row in RowReader::open(&dir.join(INDEX_FILE))? {
                let row = row?;
                items.push(Item {
                    location: row[0].as_str().unwrap_or_default().to_string(),
                    member: row[1].as_str().map(str::to_string),
                    label: row[2].as_i64(),
                    offset: row[3].as_u64(),
                    size: row[4].as_u64(),
                });
            }
            items
        };
        Ok(Self::new(info, items))
    }

    pub fn new(info: SourceInfo, items: Vec<Item>) -> Self {
        Self {
            info,
            items,
            zips: Mutex::new(Vec::new()),
        }
    }

    /// Number of items.
    pub fn len(&self) -> u64 {
        match self.info.kind {
            SourceKind::Shapes => self.info.count,
            _ => self.items.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How item `i` is named in manifests, rejects and `KEY.json`.
    pub fn describe(&self, i: u64) -> String {
        match self.info.kind {
            SourceKind::Shapes => format!("shapes/{i}"),
            SourceKind::Webdataset => {
                let it = &self.items[i as usize];
                format!("{}#{}", it.location, it.member.as_deref().unwrap_or(""))
            }
            _ => self.items[i as usize].location.clone(),
        }
    }

    /// The label of item `i`.
    pub fn label(&self, i: u64) -> Option<i64> {
        match self.info.kind {
            SourceKind::Shapes => {
                let s = self.info.shapes.expect("shapes spec");
                Some((i % s.classes as u64) as i64)
            }
            _ => self.items[i as usize].label,
        }
    }

    /// Read item `i` (safe to call from many threads).
    pub fn fetch(&self, i: u64) -> Result<Fetched> {
        match self.info.kind {
            SourceKind::Shapes => {
                let s = self.info.shapes.expect("shapes spec");
                Ok(Fetched::Pixels(
                    shapes::render(s.seed, i, s.classes, s.resolution).0,
                ))
            }
            SourceKind::Folder => {
                let root = self.info.root.as_deref().expect("folder root");
                let path = root.join(&self.items[i as usize].location);
                std::fs::read(&path)
                    .map(Fetched::Bytes)
                    .map_err(DataError::io("read", path))
            }
            SourceKind::Webdataset => {
                let it = &self.items[i as usize];
                let path = Path::new(&it.location);
                let mut f = File::open(path).map_err(DataError::io("open", path))?;
                let bytes =
                    tar::read_member(&mut f, path, it.offset.unwrap_or(0), it.size.unwrap_or(0))?;
                Ok(Fetched::Bytes(bytes))
            }
            SourceKind::Zip => {
                let root = self.info.root.as_deref().expect("zip path");
                let mut archive = match self.zips.lock().expect("not poisoned").pop() {
                    Some(a) => a,
                    None => {
                        let f = File::open(root).map_err(DataError::io("open zip", root))?;
                        zip::ZipArchive::new(BufReader::new(f)).map_err(|e| {
                            DataError::Invalid(format!("zip `{}`: {e}", root.display()))
                        })?
                    }
                };
                let it = &self.items[i as usize];
                let mut bytes = Vec::new();
                let read = archive
                    .by_index(it.offset.unwrap_or(0) as usize)
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|mut f| f.read_to_end(&mut bytes));
                self.zips.lock().expect("not poisoned").push(archive);
                read.map_err(|source| DataError::Io {
                    op: "read zip member",
                    path: root.join(&it.location),
                    source,
                })?;
                Ok(Fetched::Bytes(bytes))
            }
        }
    }
}

/// A digest of what a listing would read (paths, sizes, mtimes): goes into a source
/// stage's fingerprint, so a changed folder makes it stale.
pub fn listing_digest(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    let mut files: BTreeMap<PathBuf, (u64, i128)> = BTreeMap::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(DataError::io("read", p))?;
        if meta.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).map_err(DataError::io("read folder", &dir))? {
                    let e = e.map_err(DataError::io("read folder", &dir))?;
                    let path = e.path();
                    if e.file_name().to_string_lossy().starts_with('.') {
                        continue;
                    }
                    let Ok(m) = std::fs::metadata(&path) else {
                        continue;
                    };
                    if m.is_dir() {
                        stack.push(path);
                    } else {
                        files.insert(path, stamp(&m));
                    }
                }
            }
        } else {
            files.insert(p.clone(), stamp(&meta));
        }
    }
    for (path, (len, mtime)) in &files {
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(len.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(super::image::sha256_hex(&h.finalize()))
}

fn stamp(m: &std::fs::Metadata) -> (u64, i128) {
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    (m.len(), mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn folder_labels_follow_sorted_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "dog/b.jpg",
            "cat/z.png",
            "cat/sub/a.webp",
            "dog/notes.txt",
            ".hidden/x.jpg",
        ] {
            touch(dir.path(), f);
        }
        let l = list_folder(dir.path(), LabelMode::Auto, None).unwrap();
        let got: Vec<_> = l
            .items
            .iter()
            .map(|i| (i.location.as_str(), i.label))
            .collect();
        assert_eq!(
            got,
            [
                ("cat/sub/a.webp", Some(0)),
                ("cat/z.png", Some(0)),
                ("dog/b.jpg", Some(1))
            ]
        );
        assert_eq!(l.classes.unwrap(), ["cat", "dog"]);
        assert_eq!(l.ignored, 1);
        let l = list_folder(dir.path(), LabelMode::None, None).unwrap();
        assert!(l.classes.is_none() && l.items.iter().all(|i| i.label.is_none()));
    }

    #[test]
    fn flat_folder_is_unconditional_and_descriptor_maps_ids() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a.jpg");
        touch(dir.path(), "b.jpg");
        let l = list_folder(dir.path(), LabelMode::Auto, None).unwrap();
        assert!(l.classes.is_none());
        assert!(list_folder(dir.path(), LabelMode::Folders, None).is_err());

        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "dog/1.jpg");
        touch(dir.path(), "cat/1.jpg");
        let d: Descriptor = serde_yaml::from_str("name: pets\nclasses: {dog: 0, cat: 1}").unwrap();
        let l = list_folder(dir.path(), LabelMode::Auto, Some(&d)).unwrap();
        let got: Vec<_> = l
            .items
            .iter()
            .map(|i| (i.location.as_str(), i.label))
            .collect();
        assert_eq!(got, [("cat/1.jpg", Some(1)), ("dog/1.jpg", Some(0))]);
        touch(dir.path(), "bird/1.jpg");
        let e = list_folder(dir.path(), LabelMode::Auto, Some(&d)).unwrap_err();
        assert!(e.to_string().contains("bird"), "{e}");
    }

    #[test]
    fn missing_folder_is_named() {
        let e = list_folder(Path::new("/no/such/dir"), LabelMode::Auto, None).unwrap_err();
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn source_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let info = SourceInfo {
            format: FORMAT,
            kind: SourceKind::Folder,
            root: Some(dir.path().to_path_buf()),
            transform: Transform::CenterCrop,
            resolution: Some(Resolution::square(64)),
            classes: Some(vec!["a".into()]),
            count: 1,
            dataset: None,
            shapes: None,
        };
        let items = vec![Item {
            location: "a/1.jpg".into(),
            member: None,
            label: Some(0),
            offset: None,
            size: None,
        }];
        write_source(&dir.path().join("out"), &info, &items).unwrap();
        let s = Source::open(&dir.path().join("out")).unwrap();
        assert_eq!(s.info, info);
        assert_eq!(s.items, items);
    }
}
