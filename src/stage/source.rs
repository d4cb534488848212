//! Source stages: `source/folder`, `source/zip`, `source/webdataset`, `source/shapes`.
//!
//! A source stage only *lists* its input: it writes `source.json` (kind, root, transform,
//! resolution, class names, count) and `index.parquet` (one row per image, stable order)
//! into its output folder; `shard` then reads the images through that index in
//! parallel. See [`crate::data::source`] for the hand-off format. `source/shapes` writes
//! no index (images are rendered from `(seed, index)`), plus a `preview.png`.
//!
//! Parameters:
//! * `source/folder`: `path`, `transform` (`none` | `center-crop` | `center-crop-adm` |
//!   `center-crop-wide`), `resolution` (`256` or `512x384`), `labels` (`auto` |
//!   `folders` | `none`), `dataset` (a descriptor in `datasets/`, e.g. `imagenet`).
//! * `source/zip`: the same; labels come from the zip's `dataset.json` when it has them.
//! * `source/webdataset`: `path` (brace pattern of local .tar shards), `transform`,
//!   `resolution`.
//! * `source/shapes`: `count`, `resolution` (default 64), `classes` (1-10, default 10),
//!   `seed` (default 0).

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::{
    parse_params, Cancelled, Outcome, ParamError, Params, PlanContext, StageContext, StageKind,
};
use crate::data::descriptor::Descriptor;
use crate::data::source::{
    list_folder, list_webdataset, list_zip, listing_digest, write_source, LabelMode, Listing,
    ShapesSpec, SourceInfo, SourceKind,
};
use crate::data::transform::{self, Resolution, Transform};
use crate::data::{self, shapes, DataError, Monitor};

/// Forwards library progress and cancellation to a stage context.
pub(crate) struct StageMonitor<'a>(pub &'a StageContext);

impl Monitor for StageMonitor<'_> {
    fn start(&self, total: u64, done: u64) {
        self.0.progress.start(Some(total), "img");
        self.0.progress.set_position(done);
    }
    fn advance(&self, n: u64) {
        self.0.progress.inc(n)
    }
    fn note(&self, line: &str) {
        self.0.progress.log(line)
    }
    fn cancelled(&self) -> bool {
        self.0.cancel.is_cancelled()
    }
}

/// A library error as the stage reports it: cancellation stays [`Cancelled`], anything
/// else names the stage.
pub(crate) fn stage_error(cx: &StageContext, e: DataError) -> anyhow::Error {
    match e {
        DataError::Cancelled => anyhow::Error::new(Cancelled),
        e => anyhow::Error::new(e).context(format!("stage `{}` ({})", cx.name, cx.kind)),
    }
}

/// The worker threads a data stage uses (0 lets rayon use every core).
pub(crate) fn threads(cx: &StageContext) -> usize {
    cx.threads
}

fn check_transform(t: Transform, r: Option<Resolution>) -> Result<(), ParamError> {
    transform::check(t, r).map_err(|m| {
        ParamError::new(
            if r.is_none() {
                "resolution"
            } else {
                "transform"
            },
            m,
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParams {
    /// The folder / zip file / shard pattern, relative to the pipeline file.
    path: String,
    #[serde(default)]
    transform: Transform,
    #[serde(default)]
    resolution: Option<Resolution>,
    #[serde(default)]
    labels: LabelMode,
    /// A dataset descriptor (`datasets/NAME.yaml`) with the class mapping.
    #[serde(default)]
    dataset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WdsParams {
    path: String,
    #[serde(default)]
    transform: Transform,
    #[serde(default)]
    resolution: Option<Resolution>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapesParams {
    count: u64,
    #[serde(default = "default_shapes_resolution")]
    resolution: u32,
    #[serde(default = "default_shapes_classes")]
    classes: usize,
    #[serde(default)]
    seed: u64,
}

fn default_shapes_resolution() -> u32 {
    64
}
fn default_shapes_classes() -> usize {
    shapes::SHAPES.len()
}

/// What a listing stage found, before it is written out.
struct Found<'a> {
    kind: SourceKind,
    root: Option<&'a Path>,
    /// The path or pattern as shown in messages.
    shown: String,
    listing: Listing,
    transform: Transform,
    resolution: Option<Resolution>,
    dataset: Option<(String, &'a Descriptor)>,
}

/// Finish a listing stage: refuse an empty source, write the hand-off files.
fn publish(cx: &StageContext, found: Found<'_>) -> anyhow::Result<Outcome> {
    let Found {
        kind,
        root,
        shown,
        listing,
        transform,
        resolution,
        dataset,
    } = found;
    let count = listing.items.len() as u64;
    if count == 0 {
        anyhow::bail!(
            "stage `{}` ({}): no images (.jpg, .jpeg, .png, .webp) found in `{shown}`{}",
            cx.name,
            cx.kind,
            if listing.ignored > 0 {
                format!(" ({} other files ignored)", listing.ignored)
            } else {
                String::new()
            }
        );
    }
    if let Some((_, d)) = &dataset {
        if let Some(expected) = d.expected.images {
            if expected != count {
                cx.progress.log(format!(
                    "note: dataset `{}` expects {expected} images, found {count} (a subset?)",
                    d.name
                ));
            }
        }
    }
    let info = SourceInfo {
        format: 1,
        kind,
        root: root.map(Path::to_path_buf),
        transform,
        resolution,
        classes: listing.classes.clone(),
        count,
        dataset: dataset.map(|(n, _)| n),
        shapes: None,
    };
    write_source(&cx.out, &info, &listing.items).map_err(|e| stage_error(cx, e))?;
    cx.progress.log(format!(
        "found {count} images in `{shown}`{}{}",
        match &listing.classes {
            Some(c) => format!(", {} classes", c.len()),
            None => ", unlabelled".to_string(),
        },
        if listing.ignored > 0 {
            format!(", ignored {} other files", listing.ignored)
        } else {
            String::new()
        }
    ));
    let mut outcome = Outcome {
        images: Some(count),
        ..Default::default()
    };
    outcome.info.insert("images".into(), count.into());
    outcome
        .info
        .insert("ignored_files".into(), listing.ignored.into());
    outcome.info.insert(
        "classes".into(),
        listing
            .classes
            .map_or(serde_json::Value::Null, |c| c.len().into()),
    );
    Ok(outcome)
}

fn load_descriptor(cx: &StageContext, name: &Option<String>) -> anyhow::Result<Option<Descriptor>> {
    match name {
        Some(n) => {
            let (_, d) = Descriptor::find(&cx.project_root, n).map_err(|e| stage_error(cx, e))?;
            Ok(Some(d))
        }
        None => Ok(None),
    }
}

fn require_path(cx: &StageContext, path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!(
            "stage `{}` ({}): {what} `{}` does not exist (relative paths are resolved \
             against the pipeline file's folder)",
            cx.name,
            cx.kind,
            path.display()
        );
    }
    Ok(())
}

/// `source/folder`.
pub struct SourceFolder;

impl StageKind for SourceFolder {
    fn name(&self) -> &'static str {
        "source/folder"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a folder of JPEG/PNG/WebP images (labels from class folders or a dataset descriptor)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: FileParams = parse_params(with)?;
        check_transform(p.transform, p.resolution)
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: FileParams = parse_params(with)?;
        let path = cx.pipeline_dir.join(&p.path);
        if !path.exists() {
            return Ok(serde_json::Value::Null);
        }
        let mut paths = vec![path];
        if let Some(d) = &p.dataset {
            if let Ok((dp, _)) = Descriptor::find(cx.project_root, d) {
                paths.push(dp);
            }
        }
        Ok(listing_digest(&paths)?.into())
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        run_listed(cx, SourceKind::Folder, "folder", list_folder)
    }
}

/// Log what a shard-writing stage (`shard`, `downsample`) wrote and turn its summary into
/// the run record's `info`.
pub(crate) fn written(
    cx: &StageContext,
    s: &crate::data::prep::ShardSummary,
) -> anyhow::Result<Outcome> {
    cx.progress.log(format!(
        "{} samples in {} shards ({:.1} MB), {} rejected, {:.1} images/s",
        s.samples,
        s.shards,
        s.bytes as f64 / 1e6,
        s.rejects,
        (s.samples + s.rejects) as f64 / s.seconds.max(1e-9)
    ));
    let info = match serde_json::to_value(s)? {
        serde_json::Value::Object(map) => map,
        _ => Default::default(),
    };
    Ok(Outcome {
        images: Some(s.samples),
        info,
        partial: false,
    })
}

/// The run of `source/folder` and `source/zip`: check the path, list it with `list`
/// (labels from folders, `dataset.json` or a descriptor), and publish the listing.
fn run_listed(
    cx: &StageContext,
    kind: SourceKind,
    what: &str,
    list: fn(&Path, LabelMode, Option<&Descriptor>) -> crate::data::Result<Listing>,
) -> anyhow::Result<Outcome> {
    let p: FileParams = parse_params(&cx.params)?;
    let path = cx.resolve_path(&p.path);
    require_path(cx, &path, what)?;
    let d = load_descriptor(cx, &p.dataset)?;
    let listing = list(&path, p.labels, d.as_ref()).map_err(|e| stage_error(cx, e))?;
    let found = Found {
        kind,
        root: Some(&path),
        shown: path.display().to_string(),
        listing,
        transform: p.transform,
        resolution: p.resolution,
        dataset: p.dataset.clone().zip(d.as_ref()),
    };
    publish(cx, found)
}

/// `source/zip`.
pub struct SourceZip;

impl StageKind for SourceZip {
    fn name(&self) -> &'static str {
        "source/zip"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "an EDM/RDM dataset zip (images + dataset.json labels)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: FileParams = parse_params(with)?;
        check_transform(p.transform, p.resolution)
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: FileParams = parse_params(with)?;
        let path = cx.pipeline_dir.join(&p.path);
        if !path.exists() {
            return Ok(serde_json::Value::Null);
        }
        Ok(listing_digest(&[path])?.into())
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        run_listed(cx, SourceKind::Zip, "zip file", list_zip)
    }
}

/// `source/webdataset`.
pub struct SourceWebdataset;

impl StageKind for SourceWebdataset {
    fn name(&self) -> &'static str {
        "source/webdataset"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "existing local WebDataset shards (brace patterns like data-{000000..000099}.tar)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: WdsParams = parse_params(with)?;
        data::wds::expand(&p.path).map_err(|e| ParamError::new("path", e.to_string()))?;
        check_transform(p.transform, p.resolution)
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: WdsParams = parse_params(with)?;
        let pattern = cx.pipeline_dir.join(&p.path);
        let shards: Vec<_> = data::wds::expand(&pattern.to_string_lossy())?
            .into_iter()
            .map(std::path::PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        Ok(listing_digest(&shards)?.into())
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: WdsParams = parse_params(&cx.params)?;
        let pattern = cx.resolve_path(&p.path).to_string_lossy().into_owned();
        let listing = list_webdataset(&pattern).map_err(|e| stage_error(cx, e))?;
        let found = Found {
            kind: SourceKind::Webdataset,
            root: None,
            shown: pattern,
            listing,
            transform: p.transform,
            resolution: p.resolution,
            dataset: None,
        };
        publish(cx, found)
    }
}

/// `source/shapes`.
pub struct SourceShapes;

impl StageKind for SourceShapes {
    fn name(&self) -> &'static str {
        "source/shapes"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a synthetic, seeded dataset of coloured shapes (quickstart and tests)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: ShapesParams = parse_params(with)?;
        if p.count == 0 {
            return Err(ParamError::new("count", "`count` must be at least 1"));
        }
        if !(1..=shapes::SHAPES.len()).contains(&p.classes) {
            return Err(ParamError::new(
                "classes",
                format!("`classes` must be 1..={}", shapes::SHAPES.len()),
            )
            .with_hint(format!("the shapes are {}", shapes::SHAPES.join(", "))));
        }
        if !(4..=4096).contains(&p.resolution) {
            return Err(ParamError::new(
                "resolution",
                "`resolution` must be 4..=4096",
            ));
        }
        Ok(())
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: ShapesParams = parse_params(&cx.params)?;
        self.check(&cx.params)?;
        let info = SourceInfo {
            format: 1,
            kind: SourceKind::Shapes,
            root: None,
            transform: Transform::None,
            resolution: None,
            classes: Some(
                shapes::SHAPES[..p.classes]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            count: p.count,
            dataset: None,
            shapes: Some(ShapesSpec {
                seed: p.seed,
                classes: p.classes,
                resolution: p.resolution,
            }),
        };
        write_source(&cx.out, &info, &[]).map_err(|e| stage_error(cx, e))?;
        let grid = shapes::preview(p.seed, p.classes, p.resolution.min(128), 8, 4, p.count);
        let preview = cx.out.join("preview.png");
        std::fs::write(&preview, data::image::encode_png(&grid)).with_context(|| {
            format!("stage `{}`: cannot write `{}`", cx.name, preview.display())
        })?;
        let mut outcome = Outcome {
            images: Some(p.count),
            ..Default::default()
        };
        outcome.info.insert("images".into(), p.count.into());
        outcome.info.insert("classes".into(), p.classes.into());
        Ok(outcome)
    }
}
