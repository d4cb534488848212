//! `shard`: a source's items → shuffled, resumable WebDataset shards + manifests.
//!
//! 1. The items are put in a seeded order ([`super::permutation`]); sample keys are the
//!    items' positions in the *source* order (`00000042`: stable, no dots), so a key
//!    names the same image whatever the shuffle.
//! 2. Items are processed in batches: fetch, decode, transform, PNG-encode and hash in
//!    parallel on a rayon pool; the batch's results are then written in order by one
//!    thread. The bytes therefore do not depend on the number of threads, and memory
//!    holds one batch.
//! 3. A shard closes when it holds `samples_per_shard` samples or the next sample would
//!    take it over `max_shard_bytes`. Closing **commits** it: the tar is renamed into
//!    place, then its manifest part, rejects part and commit record are written under
//!    `.parts/` (the record last, atomically). Bad inputs go to the open shard's rejects
//!    (`on_error: skip`) or stop the run naming the file (`on_error: fail`).
//! 4. On a rerun into the same folder, committed shards are kept and work resumes at the
//!    position the last record names; a half-written shard is redone from its start.
//! 5. At the end the parts are concatenated into `manifest.parquet` and
//!    `rejects.parquet`, `classes.json` is written and `.parts/` is removed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::image::{decode_rgb, encode_png, sha256_hex};
use super::source::{write_atomic, Fetched, Source};
use super::tar::{member_size, ShardWriter};
use super::transform::{self, Resolution, Transform};
use super::{permutation, thread_pool, DataError, Monitor, OnError, Result};
use crate::manifest::{self, data_schema, rejects_schema, Cell, TableWriter};

pub const MANIFEST_FILE: &str = "manifest.parquet";
pub const REJECTS_FILE: &str = "rejects.parquet";
pub const CLASSES_FILE: &str = "classes.json";
pub(crate) const PARTS_DIR: &str = ".parts";

/// Parameters of `shard`.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub samples_per_shard: u64,
    pub max_shard_bytes: Option<u64>,
    /// `None`: keep the source order.
    pub shuffle_seed: Option<u64>,
    pub on_error: OnError,
    pub threads: usize,
    /// Shard file names: `PREFIX-000000.tar`.
    pub prefix: String,
}

/// What `shard` (and `downsample`) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardSummary {
    pub samples: u64,
    pub rejects: u64,
    pub shards: u64,
    pub bytes: u64,
    /// Shards found committed by an earlier, interrupted run.
    pub resumed_shards: u64,
    pub seconds: f64,
}

/// `KEY.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleMeta {
    pub source: String,
    pub original_size: [u32; 2],
    pub transform: Transform,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<i64>,
}

/// The commit record of one part (`.parts/part-000003.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartRecord {
    /// The shard file, or `None` for a part that holds only rejects.
    pub shard: Option<String>,
    /// Positions `[first, next)` of the shuffled order this part covers.
    pub first: u64,
    pub next: u64,
    pub samples: u64,
    pub rejects: u64,
    pub bytes: u64,
}

pub(crate) fn part_name(i: usize) -> String {
    format!("part-{i:06}")
}

/// Committed parts, in order (a gap ends the list; later ones are stale).
pub(crate) fn read_records(parts: &Path) -> Result<Vec<PartRecord>> {
    let mut records = Vec::new();
    loop {
        let path = parts.join(format!("{}.json", part_name(records.len())));
        match std::fs::read(&path) {
            Ok(bytes) => records.push(
                serde_json::from_slice(&bytes)
                    .map_err(|e| DataError::Invalid(format!("`{}`: {e}", path.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
            Err(e) => return Err(DataError::io("read", path)(e)),
        }
    }
}

/// Write a part's manifest and rejects, then its record (the commit point).
pub(crate) fn commit_part(
    parts: &Path,
    index: usize,
    schema: arrow::datatypes::SchemaRef,
    rows: Vec<Vec<Cell>>,
    rejects: Vec<Vec<Cell>>,
    record: &PartRecord,
) -> Result<()> {
    let name = part_name(index);
    let mut w = TableWriter::create(&parts.join(format!("{name}.parquet")), schema)?;
    for r in rows {
        w.push(r)?;
    }
    w.finish()?;
    let mut w = TableWriter::create(
        &parts.join(format!("{name}.rejects.parquet")),
        rejects_schema(),
    )?;
    for r in rejects {
        w.push(r)?;
    }
    w.finish()?;
    crate::base::crash::point("shard:part-written");
    let json = serde_json::to_vec_pretty(record).expect("serialisable");
    write_atomic(&parts.join(format!("{name}.json")), &json)
}

/// Concatenate committed parts into the final manifests and drop `.parts/`.
pub(crate) fn finish_parts(
    out: &Path,
    schema: arrow::datatypes::SchemaRef,
    records: usize,
) -> Result<(u64, u64)> {
    let parts = out.join(PARTS_DIR);
    let names: Vec<String> = (0..records).map(part_name).collect();
    let rows: Vec<PathBuf> = names
        .iter()
        .map(|n| parts.join(format!("{n}.parquet")))
        .collect();
    let rejects: Vec<PathBuf> = names
        .iter()
        .map(|n| parts.join(format!("{n}.rejects.parquet")))
        .collect();
    let samples = manifest::concat(&out.join(MANIFEST_FILE), schema, &rows)?;
    let rejected = manifest::concat(&out.join(REJECTS_FILE), rejects_schema(), &rejects)?;
    std::fs::remove_dir_all(&parts).map_err(DataError::io("remove", &parts))?;
    Ok((samples, rejected))
}

/// Remove the temporary files an interrupted run left (the caller holds the stage's lock,
/// so no live writer owns them).
pub(crate) fn clean_tmp(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).map_err(DataError::io("read", dir))? {
        let e = e.map_err(DataError::io("read", dir))?;
        if crate::util::is_temp_name(&e.file_name().to_string_lossy()) {
            std::fs::remove_file(e.path()).map_err(DataError::io("remove", e.path()))?;
        }
    }
    Ok(())
}

/// One processed item, ready to be written.
struct Prepared {
    png: Vec<u8>,
    json: Vec<u8>,
    sha256: String,
    width: u32,
    height: u32,
}

/// A rejected item: `(what, reason)`.
type Reject = (String, String);

fn prepare(source: &Source, i: u64) -> std::result::Result<Prepared, Reject> {
    let what = source.describe(i);
    let reject = |reason: String| (what.clone(), reason);
    let img = match source.fetch(i).map_err(|e| reject(e.to_string()))? {
        Fetched::Pixels(img) => img,
        Fetched::Bytes(bytes) => decode_rgb(&bytes, &what).map_err(|e| match e {
            DataError::Image { reason, .. } => reject(reason),
            other => reject(other.to_string()),
        })?,
    };
    let original = [img.width(), img.height()];
    let info = &source.info;
    let img = transform::apply(img, info.transform, info.resolution).map_err(reject)?;
    let png = encode_png(&img);
    let meta = SampleMeta {
        source: what.clone(),
        original_size: original,
        transform: info.transform,
        resolution: info.resolution,
        label: source.label(i),
    };
    Ok(Prepared {
        sha256: sha256_hex(&png),
        json: serde_json::to_vec(&meta).expect("serialisable"),
        width: img.width(),
        height: img.height(),
        png,
    })
}

/// Width of the zero-padded keys for `n` items (at least 8 digits).
pub fn key_width(n: u64) -> usize {
    n.saturating_sub(1).to_string().len().max(8)
}

/// The shard being filled.
struct Open {
    writer: ShardWriter,
    name: String,
    first: u64,
    rows: Vec<Vec<Cell>>,
}

/// Shard `source` into `out`; see the module doc.
pub fn write_shards(
    source: &Source,
    out: &Path,
    opts: &ShardOptions,
    mon: &dyn Monitor,
) -> Result<ShardSummary> {
    let started = Instant::now();
    if opts.samples_per_shard == 0 {
        return Err(DataError::Invalid(
            "`samples_per_shard` must be at least 1".into(),
        ));
    }
    let n = source.len();
    if n == 0 {
        return Err(DataError::Invalid("the source has no images".into()));
    }
    if let Err(m) = transform::check(source.info.transform, source.info.resolution) {
        return Err(DataError::Invalid(m));
    }
    let parts = out.join(PARTS_DIR);
    std::fs::create_dir_all(&parts).map_err(DataError::io("create output folder", &parts))?;
    clean_tmp(out)?;
    clean_tmp(&parts)?;

    // Resume after the last committed part.
    let records = read_records(&parts)?;
    let mut part_index = records.len();
    let mut shard_index = records.iter().filter(|r| r.shard.is_some()).count();
    let mut summary = ShardSummary {
        resumed_shards: shard_index as u64,
        ..Default::default()
    };
    for r in &records {
        summary.samples += r.samples;
        summary.rejects += r.rejects;
        summary.bytes += r.bytes;
    }
    let mut pos = records.last().map_or(0, |r| r.next);
    if pos > 0 {
        mon.note(&format!(
            "resuming after {} committed shard(s), at image {pos} of {n}",
            summary.resumed_shards
        ));
    }

    let order = permutation(n as usize, opts.shuffle_seed);
    let width = key_width(n);
    let pool = thread_pool(opts.threads)?;
    let batch = (pool.current_num_threads() * 8).max(8);
    let mut open: Option<Open> = None;
    let mut rejects: Vec<Vec<Cell>> = Vec::new();
    let mut part_first = pos;
    mon.start(n, pos);

    // Commit the open shard (or, at the end, a rejects-only part) covering [.., next).
    let mut commit = |open: Option<Open>,
                      rejects: &mut Vec<Vec<Cell>>,
                      part_first: &mut u64,
                      next: u64,
                      summary: &mut ShardSummary|
     -> Result<()> {
        let (shard, first, rows, bytes) = match open {
            Some(o) => {
                let bytes = o.writer.finish()?;
                (Some(o.name), o.first.min(*part_first), o.rows, bytes)
            }
            None => (None, *part_first, Vec::new(), 0),
        };
        let record = PartRecord {
            shard,
            first,
            next,
            samples: rows.len() as u64,
            rejects: rejects.len() as u64,
            bytes,
        };
        summary.samples += record.samples;
        summary.rejects += record.rejects;
        summary.bytes += bytes;
        commit_part(
            &parts,
            part_index,
            data_schema(),
            rows,
            std::mem::take(rejects),
            &record,
        )?;
        part_index += 1;
        *part_first = next;
        Ok(())
    };

    while pos < n {
        if mon.cancelled() {
            return Err(DataError::Cancelled);
        }
        let end = (pos + batch as u64).min(n);
        let results: Vec<_> = pool.install(|| {
            (pos..end)
                .into_par_iter()
                .map(|p| {
                    let i = order[p as usize] as u64;
                    (i, prepare(source, i))
                })
                .collect()
        });
        for (offset, (i, result)) in results.into_iter().enumerate() {
            let p = pos + offset as u64;
            let sample = match result {
                Ok(s) => s,
                Err((what, reason)) => {
                    if opts.on_error == OnError::Fail {
                        return Err(DataError::Image { path: what, reason });
                    }
                    mon.note(&format!("skipped `{what}`: {reason}"));
                    rejects.push(vec![Cell::Str(what), Cell::Str(reason)]);
                    continue;
                }
            };
            let size = member_size(sample.png.len())
                + member_size(sample.json.len())
                + if source.label(i).is_some() {
                    member_size(20)
                } else {
                    0
                };
            let full = open.as_ref().is_some_and(|o| {
                opts.max_shard_bytes
                    .is_some_and(|max| o.writer.samples() > 0 && o.writer.bytes() + size > max)
            });
            if full {
                commit(open.take(), &mut rejects, &mut part_first, p, &mut summary)?;
            }
            let o = match &mut open {
                Some(o) => o,
                None => {
                    let name = format!("{}-{shard_index:06}.tar", opts.prefix);
                    shard_index += 1;
                    open.insert(Open {
                        writer: ShardWriter::create(&out.join(&name))?,
                        name,
                        first: part_first,
                        rows: Vec::new(),
                    })
                }
            };
            let key = format!("{i:0width$}");
            let label = source.label(i);
            let cls = label.map(|l| l.to_string());
            let mut fields: Vec<(&str, &[u8])> = vec![("png", &sample.png)];
            if let Some(c) = &cls {
                fields.push(("cls", c.as_bytes()));
            }
            fields.push(("json", &sample.json));
            o.writer.write_sample(&key, &fields)?;
            o.rows.push(vec![
                Cell::Str(key),
                Cell::Str(o.name.clone()),
                label.into(),
                Cell::Str(source.describe(i)),
                Cell::Str(sample.sha256),
                sample.width.into(),
                sample.height.into(),
            ]);
            if o.writer.samples() >= opts.samples_per_shard {
                commit(
                    open.take(),
                    &mut rejects,
                    &mut part_first,
                    p + 1,
                    &mut summary,
                )?;
            }
        }
        mon.advance(end - pos);
        pos = end;
    }
    if open.is_some() || !rejects.is_empty() {
        commit(open.take(), &mut rejects, &mut part_first, n, &mut summary)?;
    }

    let (samples, rejected) = finish_parts(out, data_schema(), part_index)?;
    debug_assert_eq!((samples, rejected), (summary.samples, summary.rejects));
    let classes = serde_json::to_vec_pretty(&serde_json::json!({ "classes": source.info.classes }))
        .expect("serialisable");
    write_atomic(&out.join(CLASSES_FILE), &classes)?;
    summary.shards = shard_index as u64;
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.samples == 0 {
        return Err(DataError::Invalid(format!(
            "none of the {n} source images could be used; see `{}` for the reasons",
            out.join(REJECTS_FILE).display()
        )));
    }
    Ok(summary)
}
