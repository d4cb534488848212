//! `sample`: seeds → images with a chain of trained stages → tar shards, `manifest.parquet`
//! and `preview.png`. Resumable shard by shard; `relay exec ... --shard I/N` runs every
//! N-th shard from I (cluster workers), and a final run merges. `postprocess:` applies the
//! paper scripts' PIL enhancement before saving; `init:` starts relay stages from given
//! low-resolution images (super-resolution); guidance that cannot work warns (`strict:
//! true`: fails) before any image is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use super::{
    parse_params, Outcome, ParamError, Params, PlanContext, Resources, StageContext, StageKind,
};
use crate::diffusion::blur_sampler::BlurSamplerConfig;
use crate::diffusion::edm_sampler::EdmSamplerConfig;
use crate::sample::chain::{Chain, ChainStage, LabelMode};
use crate::sample::init::read_start_images;
use crate::sample::job::{merge, plan_shards, run_shard, shard_done, RowContext, StartSet};
use crate::sample::model_folder::ModelFolder;
use crate::sample::postprocess::Postprocess;
use crate::sample::seeds::Seeds;

pub struct Sample;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleParams {
    /// `0-49999`, `0-9,20`, or a list.
    seeds: Seeds,
    /// Optional cross-check: the number of seeds.
    #[serde(default)]
    count: Option<usize>,
    /// `balanced` (seed mod classes), `random` (from the seed's stream) or `{fixed: K}`.
    #[serde(default)]
    labels: LabelMode,
    #[serde(default = "default_per_shard")]
    samples_per_shard: usize,
    /// Images per network batch (does not change any image).
    #[serde(default = "default_batch")]
    batch: usize,
    /// Model folders (relative to the pipeline); default: the `train` stages in `needs:`.
    #[serde(default)]
    models: Vec<String>,
    /// Sampler settings per stage, by model name (or position `0`, `1`, ...).
    #[serde(default)]
    stages: BTreeMap<String, serde_yaml::Value>,
    /// Images in `preview.png`.
    #[serde(default = "default_preview")]
    preview: usize,
    /// PIL enhancement applied to every image before it is saved, in order, e.g.
    /// `[{contrast: 0.9}, {brightness: 1.05}, {color: 0.99}]` (generate_celebahq.py); none
    /// by default. Recorded on every manifest row.
    #[serde(default)]
    postprocess: Postprocess,
    /// Super-resolution: start the relay stages from given low-resolution images instead of
    /// a base stage's samples.
    #[serde(default)]
    init: Option<InitParams>,
    /// Make guidance problems (CFG > 1 on a model trained with label_dropout 0) errors.
    #[serde(default)]
    strict: bool,
}

/// `init:` of a sample stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitParams {
    /// An upstream data stage (its `KEY.<side>.png`), or a folder of images or an `.npz`
    /// (relative to the pipeline).
    images: String,
    /// Standard deviation of the Gaussian noise added to each image (its seed's first draw).
    #[serde(default)]
    noise: f64,
}

fn default_per_shard() -> usize {
    1000
}
fn default_batch() -> usize {
    64
}
fn default_preview() -> usize {
    64
}

fn to_json(v: &serde_yaml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl StageKind for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "generate images for a seed range with the trained stages: tar shards + manifest.parquet"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: SampleParams = parse_params(with)?;
        if let Some(c) = p.count {
            if c != p.seeds.len() {
                return Err(ParamError::new(
                    "count",
                    format!("count is {c} but `seeds` has {} seeds", p.seeds.len()),
                ));
            }
        }
        if p.samples_per_shard == 0 || p.batch == 0 {
            return Err(ParamError::new(
                "batch",
                "`batch` and `samples_per_shard` must be at least 1",
            ));
        }
        for (name, v) in &p.stages {
            let j = to_json(v);
            let edm = serde_json::from_value::<EdmSamplerConfig>(j.clone())
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate());
            let blur = serde_json::from_value::<BlurSamplerConfig>(j)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate());
            if let (Err(a), Err(b)) = (edm, blur) {
                let msg = if a == b {
                    a
                } else {
                    format!("as an EDM stage: {a}; as a relay stage: {b}")
                };
                return Err(ParamError::new(
                    format!("stages.{name}"),
                    format!("not valid sampler settings ({msg})"),
                ));
            }
        }
        p.postprocess
            .validate()
            .map_err(|e| ParamError::new("postprocess", e))?;
        if let Some(init) = &p.init {
            if !(init.noise >= 0.0 && init.noise.is_finite()) {
                return Err(ParamError::new(
                    "init.noise",
                    format!("the noise scale must be ≥ 0, got {}", init.noise),
                )
                .with_hint("RDM's super-resolution check uses 0.1"));
            }
        }
        Ok(())
    }
    fn resumable(&self) -> bool {
        true
    }
    fn shards(&self, with: &Params, out: &std::path::Path) -> Option<(usize, Vec<usize>)> {
        let p: SampleParams = parse_params(with).ok()?;
        let plans = plan_shards(&p.seeds.0, p.samples_per_shard);
        let missing = plans
            .iter()
            .filter(|s| !shard_done(out, s))
            .map(|s| s.index)
            .collect();
        Some((plans.len(), missing))
    }
    fn resources(&self, _with: &Params) -> Resources {
        Resources {
            gpu: true,
            fan_out: true,
        }
    }
    fn fingerprint_extra(&self, cx: &PlanContext<'_>, with: &Params) -> anyhow::Result<Value> {
        // Explicit model folders are outside the pipeline: their content is fingerprinted.
        let p: SampleParams = parse_params(with)?;
        let mut models = serde_json::Map::new();
        for m in &p.models {
            // A Hub reference is pinned by the commit its revision resolves to (not the
            // branch name): a moved branch makes the stage stale.
            if crate::hub::HfUri::is_hf(m) {
                let uri = crate::hub::HfUri::parse(m)?;
                let commit = crate::hub::Hub::new(None)?
                    .resolve_commit(&uri)
                    .with_context(|| format!("model `{m}`"))?;
                models.insert(m.clone(), Value::String(uri.pinned(&commit)));
                continue;
            }
            let dir = cx.pipeline_dir.join(m);
            let digest = crate::base::digest::digest_path(&dir).with_context(|| {
                format!("model folder `{m}` ({}) cannot be read", dir.display())
            })?;
            models.insert(m.clone(), Value::String(digest));
        }
        let mut extra = serde_json::json!({ "models": models });
        // Start images given as a path (not an upstream stage) are fingerprinted by content.
        if let Some(i) = &p.init {
            let path = cx.pipeline_dir.join(&i.images);
            if path.exists() {
                let digest = crate::base::digest::digest_path(&path)
                    .with_context(|| format!("`init.images` `{}` cannot be read", i.images))?;
                extra["init"] = Value::String(digest);
            }
        }
        Ok(extra)
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<super::Outcome> {
        let p: SampleParams = parse_params(&cx.params)?;
        let device = cx.device.device()?;
        // The chain, in resolution order.
        let dirs = model_dirs(&p.models, &cx.pipeline_dir, &cx.inputs)?;
        if dirs.is_empty() {
            bail!("no models: list the train stages under `needs:` or give `models:` folders");
        }
        let mut cards = Vec::new();
        for (name, dir, pinned) in dirs {
            let card = ModelFolder::load(&dir).with_context(|| format!("model `{name}`"))?;
            cards.push((card.resolution, name, dir, pinned));
        }
        cards.sort_by_key(|c| c.0);
        let mut stages = Vec::new();
        for (pos, (_, name, dir, pinned)) in cards.iter().enumerate() {
            let overrides = p
                .stages
                .get(name)
                .or_else(|| p.stages.get(&pos.to_string()))
                .map(to_json)
                .unwrap_or(Value::Null);
            let relay_by_default = pos > 0 || p.init.is_some();
            let mut stage = ChainStage::load(name, dir, relay_by_default, &overrides, &device)
                .with_context(|| format!("loading model `{name}`"))?;
            if let Some(pinned) = pinned {
                // Manifests record the Hub reference at its commit, not the cache path.
                stage.checkpoint.path = pinned.clone();
            }
            stages.push(stage);
        }
        for k in p.stages.keys() {
            let known = cards
                .iter()
                .enumerate()
                .any(|(i, c)| &c.1 == k || &i.to_string() == k);
            if !known {
                let names: Vec<&str> = cards.iter().map(|c| c.1.as_str()).collect();
                bail!(
                    "`stages.{k}`: there is no model `{k}` (models: {})",
                    names.join(", ")
                );
            }
        }
        let chain = Chain::new(stages, p.init.is_some())?;
        for problem in chain.guidance_problems() {
            if p.strict {
                bail!("{problem} (`strict: true` makes this an error)");
            }
            cx.progress.log(format!("warning: {problem}"));
        }
        let start = match &p.init {
            None => None,
            Some(init) => {
                let first = &chain.stages[0];
                let side = first.resolution / first.up_scale().max(1);
                let path = match cx.inputs.iter().find(|i| i.name == init.images) {
                    Some(input) => input.dir.clone(),
                    None => cx.pipeline_dir.join(&init.images),
                };
                let images = read_start_images(&path, side, p.seeds.len())
                    .with_context(|| format!("`init.images` of stage `{}`", cx.name))?;
                cx.progress.log(format!(
                    "starting from {} images of `{}` ({side}px) plus noise {}",
                    images.len(),
                    init.images,
                    init.noise
                ));
                Some(StartSet {
                    images,
                    noise: init.noise,
                })
            }
        };
        cx.progress.log(format!(
            "chain: {} ({}px), {} seeds, labels {}",
            chain
                .stages
                .iter()
                .map(|s| format!("{} {}px", s.name, s.resolution))
                .collect::<Vec<_>>()
                .join(" -> "),
            chain.resolution(),
            p.seeds.len(),
            if chain.label_dim() > 0 {
                p.labels.word()
            } else {
                "none (unconditional)".into()
            }
        ));

        let plans = plan_shards(&p.seeds.0, p.samples_per_shard);
        let mine: Vec<_> = plans
            .iter()
            .filter(|s| cx.shard.is_none_or(|sh| s.index % sh.count == sh.index))
            .collect();
        let todo: Vec<_> = mine.iter().filter(|s| !shard_done(&cx.out, s)).collect();
        let total: usize = mine.iter().map(|s| s.seeds.len()).sum();
        let left: usize = todo.iter().map(|s| s.seeds.len()).sum();
        cx.progress.start(Some(total as u64), "images");
        cx.progress.set_position((total - left) as u64);
        if left < total {
            cx.progress.log(format!(
                "resuming: {} of {} shards already done",
                mine.len() - todo.len(),
                mine.len()
            ));
        }
        let rows = RowContext {
            label_mode: p.labels,
            checkpoints: serde_json::to_string(
                &chain.stages.iter().map(|s| serde_json::json!({"stage": s.name, "path": s.checkpoint.path, "sha256": s.checkpoint.sha256})).collect::<Vec<_>>(),
            )?,
            sampler: serde_json::to_string(&chain.stages.iter().map(|s| serde_json::json!({"stage": s.name, "settings": s.sampler})).collect::<Vec<_>>())?,
            device: cx.device_name(),
            worker: match (&cx.worker, cx.shard, cx.devices.first()) {
                (Some(w), _, _) => w.name.clone(),
                (None, Some(s), _) => format!("{}/{}", s.index, s.count),
                (None, None, Some(d)) if cx.devices.len() > 1 => d.name.clone(),
                _ => "0/1".into(),
            },
            postprocess: p.postprocess.clone(),
            start,
        };
        let mut info = serde_json::Map::new();
        // Several devices: a worker process on each takes the shards; what a crashed
        // worker left undone is made below, here.
        let fan_out =
            cx.worker.is_none() && cx.shard.is_none() && cx.devices.len() > 1 && todo.len() > 1;
        if fan_out {
            let done_images = || {
                mine.iter()
                    .filter(|s| shard_done(&cx.out, s))
                    .map(|s| s.seeds.len() as u64)
                    .sum()
            };
            let ends = super::fanout::run_workers(cx, todo.len(), &done_images)?;
            for e in &ends {
                cx.progress.log(match &e.done {
                    Some(d) => format!(
                        "worker {}: {} shards, {} images in {:.1} s",
                        e.device, d.shards, d.images, d.seconds
                    ),
                    None => format!("worker {}: {} (no shards reported)", e.device, e.exit),
                });
            }
            info.insert("workers".into(), serde_json::to_value(&ends)?);
        }
        let mut timing = crate::sample::job::ShardTiming::default();
        let mut made = 0usize;
        let mut made_images = 0u64;
        for plan in todo {
            let _shard = match &cx.worker {
                // A worker moves on when another process holds the shard.
                Some(w) => {
                    if w.orphaned() {
                        bail!(
                            "worker {}: the run that started it is gone; stopping",
                            w.name
                        );
                    }
                    match cx.try_lock_shard(plan.index)? {
                        Some(l) => l,
                        None => continue,
                    }
                }
                // Another process may hold this shard: wait, then skip it if it finished it.
                None => cx.lock_shard(plan.index)?,
            };
            if shard_done(&cx.out, plan) {
                if cx.worker.is_none() && !fan_out {
                    cx.progress.inc(plan.seeds.len() as u64);
                }
                continue;
            }
            if let Some(w) = &cx.worker {
                w.test_delay();
            } else if fan_out {
                cx.progress.log(format!(
                    "shard {} was left unfinished by the workers: making it again here",
                    plan.index
                ));
            }
            made += 1;
            made_images += plan.seeds.len() as u64;
            cx.progress.message(format!("shard {}", plan.index));
            timing += run_shard(
                &chain,
                plan,
                &cx.out,
                p.batch,
                &rows,
                &device,
                &cx.cancel,
                |n| cx.progress.inc(n as u64),
            )?;
        }
        info.insert("seeds".into(), Value::from(p.seeds.len()));
        if fan_out {
            info.insert("redone_shards".into(), Value::from(made));
        }
        info.insert("generate_seconds".into(), Value::from(timing.generate));
        info.insert("other_seconds".into(), Value::from(timing.other));
        if cx.worker.is_some() {
            info.insert("worker_shards".into(), Value::from(made));
            return Ok(Outcome {
                images: Some(made_images),
                info,
                partial: true,
            });
        }
        if left > 0 && !fan_out {
            cx.progress.log(format!(
                "{left} images in {:.1} s ({:.2} images/s); {:.1}% of the time outside the samplers (PNG, tar, manifest)",
                timing.generate + timing.other,
                left as f64 / (timing.generate + timing.other),
                100.0 * timing.other / (timing.generate + timing.other).max(1e-9)
            ));
        }
        if cx.shard.is_some() {
            // A worker only makes its shards; a run without --shard merges.
            return Ok(Outcome {
                images: Some(left as u64),
                info,
                partial: true,
            });
        }
        let summary = merge(&cx.out, &plans, p.preview)?;
        cx.progress.log(format!(
            "manifest: {} rows in {} shards",
            summary.rows, summary.shards
        ));
        info.insert("shards".into(), Value::from(summary.shards));
        Ok(Outcome {
            images: Some(summary.rows),
            info,
            partial: false,
        })
    }
}

/// The model folders of a sample stage: explicit `models:` (relative to the pipeline, or
/// `hf://owner/name@revision/path`, downloaded through the Hub cache) or the upstream train
/// stages. The third member is, for a Hub reference, the reference pinned to the commit it
/// resolved to (what manifests record).
pub fn model_dirs(
    explicit: &[String],
    pipeline_dir: &Path,
    inputs: &[super::Input],
) -> anyhow::Result<Vec<(String, PathBuf, Option<String>)>> {
    if !explicit.is_empty() {
        return explicit
            .iter()
            .map(|m| {
                let r = crate::hub::resolve_local_or_hf(m, pipeline_dir, None)
                    .with_context(|| format!("model `{m}`"))?;
                let pinned = r.commit().map(|_| r.record());
                Ok((m.clone(), r.path().to_path_buf(), pinned))
            })
            .collect();
    }
    Ok(inputs
        .iter()
        .filter(|i| i.kind == "train")
        .map(|i| (i.name.clone(), i.dir.clone(), None))
        .collect())
}
