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

//!
//! Files: [`list`] (listing a folder, a zip or WebDataset shards, with labels) and
//! [`read`] ([`Source`]: reading items back for `shard`).

mod list;
mod read;

pub use list::{list_folder, list_webdataset, list_zip, LabelMode, Listing};
pub use read::{Fetched, Source};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::transform::{Resolution, Transform};
use super::{DataError, Result};
use crate::manifest::{index_schema, Cell, TableWriter};

pub const SOURCE_FILE: &str = "source.json";
pub const INDEX_FILE: &str = "index.parquet";
pub(super) const FORMAT: u32 = 1;

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
    use crate::data::descriptor::Descriptor;

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
