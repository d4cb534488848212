//! Hand samples to standard evaluators, streaming (never the whole set in memory):
//! * `.npz` as the ADM evaluator reads it: `arr_0` uint8 `[N, H, W, 3]` in manifest (seed)
//!   order, and `arr_1` int64 labels `[N]` for conditional samples (numpy reads both);
//! * an EDM-style PNG tree: `00000/img00000000.png`, 1000 images per folder.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::data::npy::npy_header;
use crate::data::tar::{index_members, read_member, Member};

/// The rows of a sample manifest that export needs, in manifest order.
struct Row {
    shard: String,
    key: String,
    label: Option<i64>,
}

fn read_manifest(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let path = dir.join("manifest.parquet");
    if !path.is_file() {
        bail!(
            "{} has no manifest.parquet: is it the output folder of a finished `sample` stage?",
            dir.display()
        );
    }
    let (cols, rows) = crate::manifest::read_rows(&path)?;
    let ci = |n: &str| {
        cols.iter()
            .position(|c| c == n)
            .with_context(|| format!("manifest has no `{n}` column"))
    };
    let (s, k, l) = (ci("shard")?, ci("key")?, ci("label")?);
    Ok(rows
        .into_iter()
        .map(|r| Row {
            shard: r[s].as_str().unwrap_or_default().to_string(),
            key: r[k].as_str().unwrap_or_default().to_string(),
            label: r[l].as_i64(),
        })
        .collect())
}

/// Reads PNGs out of the sample shards, one open shard at a time.
struct ShardReader {
    dir: PathBuf,
    open: Option<(String, File, HashMap<String, Member>)>,
}

impl ShardReader {
    fn png(&mut self, shard: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        if self.open.as_ref().map(|o| o.0.as_str()) != Some(shard) {
            let path = self.dir.join(shard);
            let members = index_members(&path)?
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect();
            let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            self.open = Some((shard.to_string(), f, members));
        }
        let (_, file, members) = self.open.as_mut().expect("just opened");
        let name = format!("{key}.png");
        let m = members
            .get(&name)
            .with_context(|| format!("{shard} has no {name} although the manifest lists it"))?;
        Ok(read_member(file, &self.dir.join(shard), m.offset, m.size)?)
    }
}

/// Write `samples` (a sample stage's output folder) as an ADM-evaluator `.npz`. Returns N.
pub fn export_npz(samples: &Path, out: &Path) -> anyhow::Result<usize> {
    let rows = read_manifest(samples)?;
    if rows.is_empty() {
        bail!("the manifest in {} is empty", samples.display());
    }
    let mut reader = ShardReader {
        dir: samples.to_path_buf(),
        open: None,
    };
    let first =
        crate::data::image::decode_rgb(&reader.png(&rows[0].shard, &rows[0].key)?, &rows[0].key)?;
    let (w, h) = first.dimensions();
    let tmp = crate::util::temp_path(out);
    let file = BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .large_file(true);
    zip.start_file("arr_0.npy", opts)?;
    zip.write_all(&npy_header("|u1", &[rows.len(), h as usize, w as usize, 3]))?;
    for r in &rows {
        let img = crate::data::image::decode_rgb(&reader.png(&r.shard, &r.key)?, &r.key)?;
        if img.dimensions() != (w, h) {
            bail!("sample {} is {:?}, not {w}x{h}", r.key, img.dimensions());
        }
        zip.write_all(img.as_raw())?;
    }
    let labels: Vec<i64> = rows.iter().filter_map(|r| r.label).collect();
    if labels.len() == rows.len() {
        zip.start_file("arr_1.npy", opts)?;
        zip.write_all(&npy_header("<i8", &[rows.len()]))?;
        for l in labels {
            zip.write_all(&l.to_le_bytes())?;
        }
    }
    let mut file = zip.finish()?;
    file.flush()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(rows.len())
}

/// Write `samples` as an EDM-style PNG tree under `out`. Returns N.
pub fn export_png_dir(samples: &Path, out: &Path) -> anyhow::Result<usize> {
    let rows = read_manifest(samples)?;
    let mut reader = ShardReader {
        dir: samples.to_path_buf(),
        open: None,
    };
    for (i, r) in rows.iter().enumerate() {
        let dir = out.join(format!("{:05}", i / 1000 * 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let path = dir.join(format!("img{i:08}.png"));
        std::fs::write(&path, reader.png(&r.shard, &r.key)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows.len())
}
