//! `downsample`: shards holding one high-resolution image per sample → paired shards
//! holding every requested resolution (`KEY.256.png`, `KEY.64.png`, ..., `KEY.cls`,
//! `KEY.json`), one output shard per input shard, same names, same sample order.
//!
//! Levels, largest first: with the `box` filter each level is the exact rounded patch
//! mean ([`box_reduce`]) of the level above it (the first level of the stored image), so
//! every adjacent pair satisfies the relay property up to ½ of a grey level; if the
//! largest level equals the stored size, the stored PNG bytes are reused unchanged.
//! `lanczos` and `bicubic` resize the stored image directly to each level (Pillow's
//! filters, [`resize`]).
//!
//! Shards are processed in order, the samples of a shard in parallel batches, and each
//! output shard is committed with its manifest part like in [`super::prep`], so reruns
//! resume after the last committed shard and the bytes do not depend on thread count.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use rayon::prelude::*;

use super::image::{decode_rgb, encode_png, sha256_hex};
use super::prep::{clean_tmp, commit_part, finish_parts, read_records, PartRecord, PARTS_DIR};
use super::resample::{box_reduce, resize, Filter};
use super::tar::ShardWriter;
use super::wds::{read_shard, ShardSample};
use super::{thread_pool, DataError, Monitor, OnError, Result};
use crate::manifest::{pairs_schema, Cell};

/// Parameters of `downsample`.
#[derive(Debug, Clone)]
pub struct PairsOptions {
    /// Square sides, e.g. `[256, 64]`; written in this order.
    pub resolutions: Vec<u32>,
    pub filter: Filter,
    pub on_error: OnError,
    pub threads: usize,
}

/// What `downsample` did: the same figures as `shard`'s.
pub type PairsSummary = super::prep::ShardSummary;

/// Check `resolutions` for `filter` before reading anything.
pub fn check_resolutions(resolutions: &[u32], filter: Filter) -> std::result::Result<(), String> {
    if resolutions.is_empty() {
        return Err("`resolutions` is empty; give e.g. [256, 64]".into());
    }
    let mut sorted = resolutions.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    if sorted.contains(&0) {
        return Err("a resolution of 0".into());
    }
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err("`resolutions` lists a size twice".into());
    }
    if filter == Filter::Box {
        if let Some(w) = sorted.windows(2).find(|w| w[0] % w[1] != 0) {
            return Err(format!(
                "the box filter needs integer factors: {} is not a multiple of {}",
                w[0], w[1]
            ));
        }
    }
    Ok(())
}

/// The input shards of `dir`: its `*.tar` files, sorted.
pub fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for e in std::fs::read_dir(dir).map_err(DataError::io("read input folder", dir))? {
        let e = e.map_err(DataError::io("read input folder", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tar") && !name.starts_with('.') {
            shards.push(e.path());
        }
    }
    shards.sort();
    Ok(shards)
}

struct Made {
    /// `(resolution, png bytes)` in the requested order.
    levels: Vec<(u32, Vec<u8>)>,
    label: Option<i64>,
    source: String,
    cls: Option<Vec<u8>>,
    json: Option<Vec<u8>>,
}

fn make(s: &ShardSample, shard: &str, opts: &PairsOptions) -> std::result::Result<Made, String> {
    let what = format!("{shard}#{}", s.key);
    let (ext, bytes) = ["png", "jpg", "jpeg", "webp"]
        .iter()
        .find_map(|e| s.get(e).map(|b| (*e, b)))
        .ok_or_else(|| "no png/jpg/jpeg/webp file in the sample".to_string())?;
    let img = decode_rgb(bytes, &what).map_err(|e| match e {
        DataError::Image { reason, .. } => reason,
        other => other.to_string(),
    })?;
    let (w, h) = img.dimensions();
    if w != h {
        return Err(format!(
            "the image is {w}x{h}; downsample needs square images"
        ));
    }
    let mut order: Vec<u32> = opts.resolutions.clone();
    order.sort_unstable_by(|a, b| b.cmp(a));
    if order[0] > w {
        return Err(format!(
            "the image is {w}x{w}, smaller than the largest resolution {}",
            order[0]
        ));
    }
    let mut made: Vec<(u32, Vec<u8>)> = Vec::with_capacity(order.len());
    let mut current: Option<RgbImage> = None;
    for &r in &order {
        let png = if r == w && ext == "png" {
            bytes.to_vec()
        } else {
            let level = match opts.filter {
                Filter::Box => {
                    let above = current.as_ref().unwrap_or(&img);
                    if !above.width().is_multiple_of(r) {
                        return Err(format!(
                            "the image is {w}x{w}; the box filter needs it to be a multiple of {r}"
                        ));
                    }
                    box_reduce(above, above.width() / r)
                }
                f => resize(&img, r, r, f),
            };
            let png = encode_png(&level);
            current = Some(level);
            png
        };
        made.push((r, png));
    }
    let levels = opts
        .resolutions
        .iter()
        .map(|r| {
            let i = made
                .iter()
                .position(|(m, _)| m == r)
                .expect("made every level");
            (*r, std::mem::take(&mut made[i].1))
        })
        .collect();
    let json = s.get("json").map(<[u8]>::to_vec);
    let source = json
        .as_deref()
        .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
        .and_then(|v| v.get("source")?.as_str().map(str::to_string))
        .unwrap_or(what);
    Ok(Made {
        levels,
        label: s.label(),
        source,
        cls: s.get("cls").map(<[u8]>::to_vec),
        json,
    })
}

/// Total samples in `dir`'s `manifest.parquet`, if it has one (for progress only).
fn expected_total(dir: &Path) -> Option<u64> {
    crate::manifest::row_count(&dir.join(super::prep::MANIFEST_FILE)).ok()
}

/// Write paired shards for every shard of `input` into `out`; see the module doc.
pub fn write_pairs(
    input: &Path,
    out: &Path,
    opts: &PairsOptions,
    mon: &dyn Monitor,
) -> Result<PairsSummary> {
    let started = Instant::now();
    check_resolutions(&opts.resolutions, opts.filter).map_err(DataError::Invalid)?;
    let shards = list_shards(input)?;
    if shards.is_empty() {
        return Err(DataError::Invalid(format!(
            "no .tar shards in `{}`; the upstream stage should be `shard`",
            input.display()
        )));
    }
    let parts = out.join(PARTS_DIR);
    std::fs::create_dir_all(&parts).map_err(DataError::io("create output folder", &parts))?;
    clean_tmp(out)?;
    clean_tmp(&parts)?;
    let records = read_records(&parts)?;
    let schema = pairs_schema(&opts.resolutions);
    let mut summary = PairsSummary {
        resumed_shards: records.len() as u64,
        ..Default::default()
    };
    for r in &records {
        summary.samples += r.samples;
        summary.rejects += r.rejects;
        summary.bytes += r.bytes;
    }
    let pool = thread_pool(opts.threads)?;
    let batch = (pool.current_num_threads() * 8).max(8);
    mon.start(
        expected_total(input).unwrap_or(0),
        summary.samples + summary.rejects,
    );
    if !records.is_empty() {
        mon.note(&format!(
            "resuming after {} committed shard(s)",
            records.len()
        ));
    }

    for (index, shard) in shards.iter().enumerate().skip(records.len()) {
        let name = shard
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let mut writer = ShardWriter::create(&out.join(&name))?;
        let mut rows = Vec::new();
        let mut rejects = Vec::new();
        let mut samples = read_shard(shard)?.peekable();
        while samples.peek().is_some() {
            if mon.cancelled() {
                return Err(DataError::Cancelled);
            }
            let chunk: Vec<ShardSample> = samples.by_ref().take(batch).collect::<Result<_>>()?;
            let made: Vec<_> =
                pool.install(|| chunk.par_iter().map(|s| make(s, &name, opts)).collect());
            for (s, m) in chunk.iter().zip(made) {
                let m = match m {
                    Ok(m) => m,
                    Err(reason) => {
                        let what = format!("{}#{}", shard.display(), s.key);
                        if opts.on_error == OnError::Fail {
                            return Err(DataError::Image { path: what, reason });
                        }
                        mon.note(&format!("skipped `{what}`: {reason}"));
                        rejects.push(vec![Cell::Str(what), Cell::Str(reason)]);
                        continue;
                    }
                };
                let exts: Vec<String> = m.levels.iter().map(|(r, _)| format!("{r}.png")).collect();
                let mut fields: Vec<(&str, &[u8])> = m
                    .levels
                    .iter()
                    .zip(&exts)
                    .map(|((_, png), ext)| (ext.as_str(), png.as_slice()))
                    .collect();
                if let Some(c) = &m.cls {
                    fields.push(("cls", c));
                }
                if let Some(j) = &m.json {
                    fields.push(("json", j));
                }
                writer.write_sample(&s.key, &fields)?;
                let mut row = vec![
                    Cell::Str(s.key.clone()),
                    Cell::Str(name.clone()),
                    m.label.into(),
                    Cell::Str(m.source),
                ];
                row.extend(m.levels.iter().map(|(_, png)| Cell::Str(sha256_hex(png))));
                rows.push(row);
            }
            mon.advance(chunk.len() as u64);
        }
        let bytes = writer.finish()?;
        let record = PartRecord {
            shard: Some(name),
            first: index as u64,
            next: index as u64 + 1,
            samples: rows.len() as u64,
            rejects: rejects.len() as u64,
            bytes,
        };
        summary.samples += record.samples;
        summary.rejects += record.rejects;
        summary.bytes += bytes;
        commit_part(&parts, index, schema.clone(), rows, rejects, &record)?;
    }
    finish_parts(out, schema, shards.len())?;
    summary.shards = shards.len() as u64;
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.samples == 0 {
        return Err(DataError::Invalid(format!(
            "none of the input samples could be downsampled; see `{}`",
            out.join(super::prep::REJECTS_FILE).display()
        )));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_checks() {
        assert!(check_resolutions(&[256, 64], Filter::Box).is_ok());
        assert!(check_resolutions(&[64, 256, 1024], Filter::Box).is_ok());
        assert!(check_resolutions(&[256, 96], Filter::Box).is_err());
        assert!(check_resolutions(&[256, 96], Filter::Lanczos).is_ok());
        assert!(check_resolutions(&[64, 64], Filter::Box).is_err());
        assert!(check_resolutions(&[], Filter::Box).is_err());
    }
}
