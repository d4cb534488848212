//! Where the images of a metric come from, read in units (a tar shard, or 1000 images of an
//! `.npz` or a folder) so that features can be cached unit by unit and a rerun resumes:
//!
//! * a `sample` stage's folder: `manifest.parquet` (seed order) and `samples-*.tar`;
//! * a data stage's shards (`shard`: `KEY.png`; `downsample`: `KEY.256.png`, `KEY.64.png`):
//!   every `.tar` of the folder in name order, one field per sample;
//! * an `.npz` with `arr_0` uint8 [N, H, W, 3] (what `relay export` and ADM's reference
//!   batches hold), streamed;
//! * a folder of PNG/JPEG/WebP files (searched recursively, sorted by path).
//!
//! Images are visited one at a time ([`Visitor`]); a unit whose features are cached is
//! skipped without decoding.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::MetricsError;
use crate::data::image::{decode_rgb, has_image_extension};
use crate::data::npy::Npz;
use crate::data::tar::{index_members, read_member, Member};

/// Images per unit of an `.npz` or a folder.
pub const UNIT: usize = 1000;

/// What receives the images.
pub trait Visitor {
    /// Unit `unit` of `len` images starts; return `false` to skip it (features cached).
    fn start(&mut self, unit: usize, len: usize) -> Result<bool, MetricsError>;
    fn image(&mut self, img: RgbImage) -> Result<(), MetricsError>;
    fn end(&mut self, unit: usize) -> Result<(), MetricsError>;
}

/// An image set, opened and listed (nothing decoded yet).
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A sample stage's output: per shard, the keys in manifest order.
    Samples {
        dir: PathBuf,
        units: Vec<(String, Vec<String>)>,
    },
    /// Tar shards with one image field per sample.
    Shards {
        dir: PathBuf,
        field: String,
        units: Vec<(PathBuf, Vec<Member>)>,
    },
    /// `arr_0` of an `.npz`.
    Npz {
        path: PathBuf,
        n: usize,
        h: usize,
        w: usize,
    },
    /// Image files.
    Folder { dir: PathBuf, files: Vec<PathBuf> },
}

fn bad(msg: String) -> MetricsError {
    MetricsError::BadInput(msg)
}

impl ImageSource {
    /// Open `path`. `resolution` picks the field of multi-resolution shards (`KEY.256.png`).
    pub fn open(path: &Path, resolution: Option<u32>) -> Result<Self, MetricsError> {
        let shown = path.display();
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "npz") {
                return Self::open_npz(path);
            }
            return Err(bad(format!(
                "{shown} is a file but not an .npz; give a sample stage folder, an .npz with `arr_0` or a folder of images"
            )));
        }
        if !path.is_dir() {
            return Err(bad(format!("{shown} does not exist")));
        }
        if path.join("manifest.parquet").is_file()
            && list_tars(path)?
                .iter()
                .any(|t| file_name(t).starts_with("samples-"))
        {
            return Self::open_samples(path);
        }
        let tars = list_tars(path)?;
        if !tars.is_empty() {
            return Self::open_shards(path, tars, resolution);
        }
        let mut files = Vec::new();
        find_images(path, &mut files)?;
        if files.is_empty() {
            return Err(bad(format!(
                "{shown} holds no images: no tar shards, no PNG/JPEG/WebP files"
            )));
        }
        files.sort();
        Ok(Self::Folder {
            dir: path.to_path_buf(),
            files,
        })
    }

    fn open_samples(dir: &Path) -> Result<Self, MetricsError> {
        let (cols, rows) = crate::manifest::read_rows(&dir.join("manifest.parquet"))
            .map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        let col = |n: &str| {
            cols.iter().position(|c| c == n).ok_or_else(|| {
                bad(format!(
                    "{}/manifest.parquet has no `{n}` column: is it a sample stage's?",
                    dir.display()
                ))
            })
        };
        let (s, k) = (col("shard")?, col("key")?);
        let mut units: Vec<(String, Vec<String>)> = Vec::new();
        for r in rows {
            let shard = r[s].as_str().unwrap_or_default().to_string();
            let key = r[k].as_str().unwrap_or_default().to_string();
            match units.last_mut() {
                Some((last, keys)) if *last == shard => keys.push(key),
                _ => units.push((shard, vec![key])),
            }
        }
        Ok(Self::Samples {
            dir: dir.to_path_buf(),
            units,
        })
    }

    fn open_shards(
        dir: &Path,
        tars: Vec<PathBuf>,
        resolution: Option<u32>,
    ) -> Result<Self, MetricsError> {
        let first = index_members(&tars[0])?;
        let fields: Vec<String> = {
            let mut f: Vec<String> = first
                .iter()
                .filter_map(|m| m.name.split_once('.').map(|(_, f)| f.to_string()))
                .filter(|f| has_image_extension(f))
                .collect();
            f.sort();
            f.dedup();
            f
        };
        let field = match resolution {
            Some(r) if fields.contains(&format!("{r}.png")) => format!("{r}.png"),
            Some(r) => {
                return Err(bad(format!(
                    "the shards in {} have no {r} px images (fields: {}); pick one of their resolutions",
                    dir.display(),
                    fields.join(", ")
                )))
            }
            None if fields.len() == 1 => fields[0].clone(),
            None => {
                return Err(bad(format!(
                    "the shards in {} hold several image fields ({}); say which with `resolution`",
                    dir.display(),
                    fields.join(", ")
                )))
            }
        };
        let suffix = format!(".{field}");
        let mut units = Vec::new();
        for (i, t) in tars.into_iter().enumerate() {
            let members = if i == 0 {
                first.clone()
            } else {
                index_members(&t)?
            };
            let keep = members
                .into_iter()
                .filter(|m| {
                    m.name.ends_with(&suffix)
                        && !m.name[..m.name.len() - suffix.len()].contains('.')
                })
                .collect();
            units.push((t, keep));
        }
        Ok(Self::Shards {
            dir: dir.to_path_buf(),
            field,
            units,
        })
    }

    fn open_npz(path: &Path) -> Result<Self, MetricsError> {
        let mut z = Npz::open(path)?;
        if !z.has("arr_0") {
            return Err(bad(format!(
                "{} has no `arr_0` (the images); its arrays: {}",
                path.display(),
                z.names().join(", ")
            )));
        }
        let (h, _) = z.open_array("arr_0")?;
        match (h.descr.as_str(), h.shape.as_slice()) {
            ("|u1", &[n, hh, ww, 3]) => Ok(Self::Npz {
                path: path.to_path_buf(),
                n,
                h: hh,
                w: ww,
            }),
            _ => Err(bad(format!(
                "`arr_0` in {} is `{}` with shape {:?}; expected uint8 images [N, H, W, 3] (NHWC, 3 channels)",
                path.display(),
                h.descr,
                h.shape
            ))),
        }
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        match self {
            Self::Samples { units, .. } => units.iter().map(|u| u.1.len()).sum(),
            Self::Shards { units, .. } => units.iter().map(|u| u.1.len()).sum(),
            Self::Npz { n, .. } => *n,
            Self::Folder { files, .. } => files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of units.
    pub fn units(&self) -> usize {
        match self {
            Self::Samples { units, .. } => units.len(),
            Self::Shards { units, .. } => units.len(),
            Self::Npz { n, .. } => n.div_ceil(UNIT),
            Self::Folder { files, .. } => files.len().div_ceil(UNIT),
        }
    }

    /// What it is, in words (for logs and `metrics.json`).
    pub fn describe(&self) -> String {
        match self {
            Self::Samples { dir, .. } => format!("sample stage {}", dir.display()),
            Self::Shards { dir, field, .. } => format!("shards {} (KEY.{field})", dir.display()),
            Self::Npz { path, .. } => format!("arr_0 of {}", path.display()),
            Self::Folder { dir, .. } => format!("images under {}", dir.display()),
        }
    }

    /// Visit every image, unit by unit, in order.
    pub fn visit(&self, v: &mut dyn Visitor) -> Result<(), MetricsError> {
        match self {
            Self::Samples { dir, units } => {
                for (u, (shard, keys)) in units.iter().enumerate() {
                    if !v.start(u, keys.len())? {
                        continue;
                    }
                    let path = dir.join(shard);
                    let members = index_members(&path)?;
                    let mut file = open(&path)?;
                    for key in keys {
                        let name = format!("{key}.png");
                        let m = members.iter().find(|m| m.name == name).ok_or_else(|| {
                            bad(format!(
                                "{} has no {name} although the manifest lists it",
                                path.display()
                            ))
                        })?;
                        let bytes = read_member(&mut file, &path, m.offset, m.size)?;
                        v.image(decode_rgb(&bytes, &format!("{}#{name}", path.display()))?)?;
                    }
                    v.end(u)?;
                }
            }
            Self::Shards { units, .. } => {
                for (u, (path, members)) in units.iter().enumerate() {
                    if !v.start(u, members.len())? {
                        continue;
                    }
                    let mut file = open(path)?;
                    for m in members {
                        let bytes = read_member(&mut file, path, m.offset, m.size)?;
                        v.image(decode_rgb(
                            &bytes,
                            &format!("{}#{}", path.display(), m.name),
                        )?)?;
                    }
                    v.end(u)?;
                }
            }
            Self::Npz { path, n, h, w } => {
                let mut z = Npz::open(path)?;
                let (_, mut r) = z.open_array("arr_0")?;
                let size = h * w * 3;
                let mut buf = vec![0u8; size];
                for u in 0..n.div_ceil(UNIT) {
                    let len = UNIT.min(n - u * UNIT);
                    let wanted = v.start(u, len)?;
                    for _ in 0..len {
                        r.read_exact(&mut buf).map_err(|_| {
                            bad(format!("`arr_0` in {} is truncated", path.display()))
                        })?;
                        if wanted {
                            let img = RgbImage::from_raw(*w as u32, *h as u32, buf.clone())
                                .expect("buffer of h*w*3 bytes");
                            v.image(img)?;
                        }
                    }
                    if wanted {
                        v.end(u)?;
                    }
                }
            }
            Self::Folder { files, .. } => {
                for (u, chunk) in files.chunks(UNIT).enumerate() {
                    if !v.start(u, chunk.len())? {
                        continue;
                    }
                    for f in chunk {
                        let bytes = std::fs::read(f)
                            .map_err(|e| bad(format!("cannot read {}: {e}", f.display())))?;
                        v.image(decode_rgb(&bytes, &f.display().to_string())?)?;
                    }
                    v.end(u)?;
                }
            }
        }
        Ok(())
    }
}

fn open(path: &Path) -> Result<File, MetricsError> {
    File::open(path).map_err(|e| bad(format!("cannot open {}: {e}", path.display())))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list_tars(dir: &Path) -> Result<Vec<PathBuf>, MetricsError> {
    Ok(crate::data::pairs::list_shards(dir)?)
}

fn find_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), MetricsError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| bad(format!("cannot list {}: {e}", dir.display())))?;
    for e in entries {
        let e = e.map_err(|e| bad(format!("cannot list {}: {e}", dir.display())))?;
        let p = e.path();
        let name = file_name(&p);
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            find_images(&p, out)?;
        } else if has_image_extension(&name) {
            out.push(p);
        }
    }
    Ok(())
}
