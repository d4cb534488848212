//! `relay bench prep`: how fast a folder of photo-sized JPEGs becomes 256 + 64 pairs.
//!
//! [`prep`] generates `count` JPEGs (500×375 to 1024×768, both orientations, quality 90;
//! textured so they compress like photos) into `WORKDIR/images/` unless they are already
//! there, then times folder listing → `shard` (EDM `center-crop` to 256) → `downsample`
//! (`[256, 64]`, box) exactly as the stages run them. `scripts/bench-prep.sh` runs the
//! Pillow baseline (`benches/prep_baseline.py`) on the same folder.

use std::io::Cursor;
use std::path::Path;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use super::pairs::{write_pairs, PairsOptions};
use super::prep::{write_shards, ShardOptions};
use super::resample::Filter;
use super::source::{list_folder, LabelMode, Source, SourceInfo, SourceKind};
use super::transform::{Resolution, Transform};
use super::{shapes, thread_pool, DataError, Monitor, OnError, Result, SplitMix64};

/// Photo sizes, cycled.
pub const SIZES: [(u32, u32); 6] = [
    (500, 375),
    (640, 480),
    (800, 600),
    (1024, 768),
    (375, 500),
    (768, 1024),
];

/// The result of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct PrepBench {
    pub images: u64,
    pub threads: usize,
    pub shard_seconds: f64,
    pub downsample_seconds: f64,
    /// Listing + shard + downsample.
    pub seconds: f64,
    pub images_per_sec: f64,
}

/// One synthetic "photo": a shapes scene cropped to `w × h`, with pixel noise.
pub fn photo(index: u64, w: u32, h: u32) -> RgbImage {
    let side = w.max(h);
    let (scene, _) = shapes::render(index, index, shapes::SHAPES.len(), side);
    let mut rng = SplitMix64::new(index ^ 0xF070);
    let (x0, y0) = ((side - w) / 2, (side - h) / 2);
    RgbImage::from_fn(w, h, |x, y| {
        let p = scene.get_pixel(x + x0, y + y0).0;
        let n = rng.next_u64();
        let mut q = [0u8; 3];
        for c in 0..3 {
            let noise = ((n >> (c * 8)) & 0x1f) as i32 - 16;
            q[c] = (p[c] as i32 + noise).clamp(0, 255) as u8;
        }
        image::Rgb(q)
    })
}

/// Write `count` JPEGs `00000000.jpg ...` into `dir` (existing files are kept).
pub fn generate_photos(dir: &Path, count: u64, threads: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(DataError::io("create", dir))?;
    let pool = thread_pool(threads)?;
    pool.install(|| {
        (0..count).into_par_iter().try_for_each(|i| {
            let path = dir.join(format!("{i:08}.jpg"));
            if path.exists() {
                return Ok(());
            }
            let (w, h) = SIZES[i as usize % SIZES.len()];
            let img = photo(i, w, h);
            let mut out = Cursor::new(Vec::new());
            JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&img)
                .map_err(|e| DataError::Invalid(format!("JPEG encode: {e}")))?;
            std::fs::write(&path, out.into_inner()).map_err(DataError::io("write", &path))
        })
    })
}

/// Run the benchmark in `workdir` with `count` images on `threads` threads (0 = all).
pub fn prep(workdir: &Path, count: u64, threads: usize, mon: &dyn Monitor) -> Result<PrepBench> {
    let images = workdir.join("images");
    generate_photos(&images, count, threads)?;
    let run = workdir.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).map_err(DataError::io("remove", &run))?;
    }
    let started = Instant::now();
    let listing = list_folder(&images, LabelMode::None, None)?;
    let info = SourceInfo {
        format: 1,
        kind: SourceKind::Folder,
        root: Some(images.clone()),
        transform: Transform::CenterCrop,
        resolution: Some(Resolution::square(256)),
        classes: None,
        count: listing.items.len() as u64,
        dataset: None,
        shapes: None,
    };
    let source = Source::new(info, listing.items);
    let shard_opts = ShardOptions {
        samples_per_shard: 1000,
        max_shard_bytes: None,
        shuffle_seed: Some(0),
        on_error: OnError::Fail,
        threads,
        prefix: "data".into(),
    };
    let shards = write_shards(&source, &run.join("shards"), &shard_opts, mon)?;
    let shard_seconds = started.elapsed().as_secs_f64();
    let pair_opts = PairsOptions {
        resolutions: vec![256, 64],
        filter: Filter::Box,
        on_error: OnError::Fail,
        threads,
    };
    let t = Instant::now();
    write_pairs(&run.join("shards"), &run.join("pairs"), &pair_opts, mon)?;
    let downsample_seconds = t.elapsed().as_secs_f64();
    let seconds = started.elapsed().as_secs_f64();
    Ok(PrepBench {
        images: shards.samples,
        threads: thread_pool(threads)?.current_num_threads(),
        shard_seconds,
        downsample_seconds,
        seconds,
        images_per_sec: shards.samples as f64 / seconds,
    })
}
