//! A sampling job on disk: seeds split into shards, each committed atomically (tar and its
//! manifest part), resumed shard by shard, and merged into one manifest with a check that
//! every requested seed is there exactly once.
//!
//! Layout of the output folder:
//! * `samples-000000.tar`, ...: `SEED.png` (+ `SEED.cls` for conditional models);
//! * `.parts/000000.parquet`: a shard's manifest rows; written after its tar, so a part
//!   marks its shard as complete. Removed by the merge;
//! * `manifest.parquet`: every row, in seed order (with the start image of a
//!   super-resolution job and the post-processing applied); `preview.png`: the first images.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use candle_core::Device;
use image::RgbImage;

use super::chain::{Chain, LabelMode, Start};
use super::init::{self, StartImage};
use super::postprocess::Postprocess;
use crate::data::image::encode_png;
use crate::data::tar::ShardWriter;
use crate::manifest::{col, Cell, TableWriter};

/// One shard: its index and the (sample id, seed) pairs it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub index: usize,
    pub seeds: Vec<(u64, u64)>,
}

impl ShardPlan {
    pub fn tar_name(&self) -> String {
        format!("samples-{:06}.tar", self.index)
    }
}

/// Split the seeds into shards of `per_shard`, in order.
pub fn plan_shards(seeds: &[u64], per_shard: usize) -> Vec<ShardPlan> {
    seeds
        .chunks(per_shard.max(1))
        .enumerate()
        .map(|(index, chunk)| ShardPlan {
            index,
            seeds: chunk
                .iter()
                .enumerate()
                .map(|(j, &s)| ((index * per_shard + j) as u64, s))
                .collect(),
        })
        .collect()
}

/// The sample manifest's columns.
pub fn sample_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col("sample_id", DataType::UInt64, false),
        col("seed", DataType::UInt64, false),
        col("label", DataType::Int64, true),
        col("label_mode", DataType::Utf8, false),
        col("shard", DataType::Utf8, false),
        col("key", DataType::Utf8, false),
        col("sha256", DataType::Utf8, false),
        col("resolution", DataType::UInt32, false),
        col("checkpoints", DataType::Utf8, false),
        col("sampler", DataType::Utf8, false),
        col("nfe", DataType::UInt64, false),
        col("device", DataType::Utf8, false),
        col("worker", DataType::Utf8, false),
        col("seconds", DataType::Float64, false),
        col("source", DataType::Utf8, true),
        col("postprocess", DataType::Utf8, false),
    ]))
}

/// The key of a seed's sample (`00000042`): digits only, no dots.
pub fn key(seed: u64) -> String {
    format!("{seed:08}")
}

fn part_path(out: &Path, index: usize) -> PathBuf {
    out.join(".parts").join(format!("{index:06}.parquet"))
}

/// Whether a shard was committed (its manifest part exists, and so does its tar).
pub fn shard_done(out: &Path, plan: &ShardPlan) -> bool {
    part_path(out, plan.index).is_file() && out.join(plan.tar_name()).is_file()
}

/// What is recorded on every row besides the image itself, and what is done to every
/// image before it is written.
pub struct RowContext {
    pub label_mode: LabelMode,
    pub checkpoints: String,
    pub sampler: String,
    pub device: String,
    pub worker: String,
    /// The PIL enhancement applied before saving (recorded as [`Postprocess::describe`]).
    pub postprocess: Postprocess,
    /// Super-resolution: the start image of every sample id, and the noise added to it.
    pub start: Option<StartSet>,
}

/// The start images of a super-resolution job: image i goes with the i-th seed.
pub struct StartSet {
    pub images: Vec<StartImage>,
    pub noise: f64,
}

/// Where a shard's wall time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardTiming {
    /// In the samplers and the network.
    pub generate: f64,
    /// Everything else: PNG encoding, hashing, tar and manifest writing.
    pub other: f64,
}

impl std::ops::AddAssign for ShardTiming {
    fn add_assign(&mut self, o: Self) {
        self.generate += o.generate;
        self.other += o.other;
    }
}

/// Generate one shard and commit it: the tar first, then the manifest part.
#[allow(clippy::too_many_arguments)]
pub fn run_shard(
    chain: &Chain,
    plan: &ShardPlan,
    out: &Path,
    batch: usize,
    rows: &RowContext,
    device: &Device,
    cancel: &crate::base::cancel::Cancel,
    mut on_images: impl FnMut(usize),
) -> anyhow::Result<ShardTiming> {
    let started = Instant::now();
    let mut generate = 0.0;
    let tar_path = out.join(plan.tar_name());
    let mut tar = ShardWriter::create(&tar_path)?;
    std::fs::create_dir_all(out.join(".parts"))?;
    let mut part = TableWriter::create(&part_path(out, plan.index), sample_schema())?;
    let res = chain.resolution() as u32;
    for chunk in plan.seeds.chunks(batch.max(1)) {
        cancel.check()?;
        let seeds: Vec<u64> = chunk.iter().map(|&(_, s)| s).collect();
        let t0 = Instant::now();
        let (start, sources) = match &rows.start {
            Some(set) => {
                let imgs: Vec<&StartImage> = chunk
                    .iter()
                    .map(|&(id, _)| &set.images[id as usize])
                    .collect();
                let start = Start {
                    images: init::to_tensor(&imgs, device)?,
                    noise: set.noise,
                    classes: imgs.iter().map(|i| i.class).collect(),
                };
                let sources = imgs.iter().map(|i| Cell::Str(i.source.clone())).collect();
                (Some(start), sources)
            }
            None => (None, vec![Cell::Null; chunk.len()]),
        };
        let mut g = chain.generate(&seeds, rows.label_mode, start.as_ref(), device)?;
        let gen_secs = t0.elapsed().as_secs_f64();
        for img in &mut g.images {
            rows.postprocess.apply(img);
        }
        generate += gen_secs;
        let per_image = gen_secs / seeds.len() as f64;
        for (j, &(id, seed)) in chunk.iter().enumerate() {
            let png = encode_png(&g.images[j]);
            let sha = crate::util::sha256_hex(&png);
            let k = key(seed);
            let cls = g.classes[j].map(|c| c.to_string());
            let mut fields: Vec<(&str, &[u8])> = vec![("png", &png)];
            if let Some(c) = &cls {
                fields.push(("cls", c.as_bytes()));
            }
            tar.write_sample(&k, &fields)?;
            part.push(vec![
                Cell::U64(id),
                Cell::U64(seed),
                g.classes[j].map(|c| c as i64).into(),
                Cell::Str(if cls.is_some() {
                    rows.label_mode.word()
                } else {
                    "none".into()
                }),
                Cell::Str(plan.tar_name()),
                Cell::Str(k),
                Cell::Str(sha),
                Cell::U32(res),
                Cell::Str(rows.checkpoints.clone()),
                Cell::Str(rows.sampler.clone()),
                Cell::U64(g.nfe as u64),
                Cell::Str(rows.device.clone()),
                Cell::Str(rows.worker.clone()),
                Cell::F64(per_image),
                sources[j].clone(),
                Cell::Str(rows.postprocess.describe()),
            ])?;
        }
        on_images(chunk.len());
    }
    tar.finish()?;
    crate::base::crash::point("shard:tar-committed");
    part.finish()?;
    let total = started.elapsed().as_secs_f64();
    Ok(ShardTiming {
        generate,
        other: total - generate,
    })
}

/// What the merge found.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub rows: u64,
    pub shards: usize,
}

/// Check that every shard is committed and every seed appears exactly once, then write
/// `manifest.parquet` (seed order) and `preview.png`, and drop the parts.
pub fn merge(out: &Path, plans: &[ShardPlan], preview: usize) -> anyhow::Result<MergeSummary> {
    let missing: Vec<usize> = plans
        .iter()
        .filter(|p| !shard_done(out, p))
        .map(|p| p.index)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} shards are not complete (first: {}); run the missing ones (relay exec ... --shard) or rerun the stage",
            missing.len(),
            plans.len(),
            missing[0]
        );
    }
    // Temporary files of writers that died (a killed worker): the caller commits the
    // stage, so no live writer owns them.
    for d in [out.to_path_buf(), out.join(".parts")] {
        crate::data::prep::clean_tmp(&d)?;
    }
    let parts: Vec<PathBuf> = plans.iter().map(|p| part_path(out, p.index)).collect();
    // Completeness: exactly the requested (sample id, seed) pairs, each once.
    let mut seen = Vec::new();
    for (plan, part) in plans.iter().zip(&parts) {
        let (cols, rows) = crate::manifest::read_rows(part)?;
        let ci = |n: &str| cols.iter().position(|c| c == n).expect("schema column");
        let (id_col, seed_col) = (ci("sample_id"), ci("seed"));
        let got: Vec<(u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r[id_col].as_u64().unwrap_or(u64::MAX),
                    r[seed_col].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        if got != plan.seeds {
            bail!(
                "shard {} holds {} rows but {} seeds were requested for it (or different ones); delete {} and rerun",
                plan.index,
                got.len(),
                plan.seeds.len(),
                part.display()
            );
        }
        seen.extend(got.into_iter().map(|(_, s)| s));
    }
    let total = seen.len();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != total {
        bail!(
            "the merged manifest would hold {} duplicate seeds",
            total - seen.len()
        );
    }
    let rows = crate::manifest::concat(&out.join("manifest.parquet"), sample_schema(), &parts)?;
    write_preview(out, plans, preview)?;
    std::fs::remove_dir_all(out.join(".parts")).context("removing the merged manifest parts")?;
    Ok(MergeSummary {
        rows,
        shards: plans.len(),
    })
}

/// A grid of the first `n` images (8 per row).
fn write_preview(out: &Path, plans: &[ShardPlan], n: usize) -> anyhow::Result<()> {
    let mut images: Vec<RgbImage> = Vec::new();
    'outer: for plan in plans {
        let tar = out.join(plan.tar_name());
        let members = crate::data::tar::index_members(&tar)?;
        let mut file = std::fs::File::open(&tar)?;
        for m in members.iter().filter(|m| m.name.ends_with(".png")) {
            if images.len() >= n {
                break 'outer;
            }
            let bytes = crate::data::tar::read_member(&mut file, &tar, m.offset, m.size)?;
            images.push(crate::data::image::decode_rgb(&bytes, &m.name)?);
        }
    }
    if images.is_empty() {
        return Ok(());
    }
    let grid = grid(&images, 8);
    crate::util::write_atomic(&out.join("preview.png"), &encode_png(&grid))?;
    Ok(())
}

/// Tile images (same size) into a grid with `cols` columns and a 2-pixel gap.
pub fn grid(images: &[RgbImage], cols: usize) -> RgbImage {
    let (w, h) = images[0].dimensions();
    let cols = cols.min(images.len()).max(1) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let gap = 2;
    let mut g = RgbImage::from_pixel(
        cols * (w + gap) - gap,
        rows * (h + gap) - gap,
        image::Rgb([255, 255, 255]),
    );
    for (i, img) in images.iter().enumerate() {
        let (cx, cy) = ((i as u32 % cols) * (w + gap), (i as u32 / cols) * (h + gap));
        image::imageops::replace(&mut g, img, cx as i64, cy as i64);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_seeds_in_order() {
        let seeds: Vec<u64> = (10..17).collect();
        let p = plan_shards(&seeds, 3);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].seeds, vec![(0, 10), (1, 11), (2, 12)]);
        assert_eq!(p[2].seeds, vec![(6, 16)]);
        assert_eq!(p[1].tar_name(), "samples-000001.tar");
    }
}
