//! Reading a source's items back, in any order, for `shard`: [`Source`] opens what a source
//! stage wrote and fetches each item's bytes (or renders it, for `source/shapes`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Mutex;

use image::RgbImage;

use crate::data::{shapes, tar, DataError, Result};
use crate::manifest::RowReader;

use super::{Item, SourceInfo, SourceKind, FORMAT, INDEX_FILE, SOURCE_FILE};

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
