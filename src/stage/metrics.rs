//! `metrics`: FID, sFID, Inception Score, precision and recall of a `sample` stage (or of
//! `samples:`, a sample folder, an `.npz` with `arr_0` or a folder of images) against a
//! reference, with the FID Inception-v3. The work is [`crate::metrics`].
//!
//! ```yaml
//! fid:
//!   uses: metrics
//!   needs: [samples, pairs]
//!   with:
//!     reference: pairs            # a stage in `needs:` (its images), or an ADM .npz / folder
//!     resolution: 256             # which images of a multi-resolution data stage
//!     inception: weights/pt_inception-2015-12-05-6726825d.pth   # or hf://...
//!     metrics: [fid, sfid, is, precision, recall]                # default: all
//! ```
//!
//! Writes `metrics.json` and the samples' statistics `stats.npz` (`mu`, `sigma`, `mu_s`,
//! `sigma_s`); the numbers also go into the run record (`info`). With several sample
//! inputs (a matrix stage in `needs:`) each is evaluated: `metrics.json` then maps each
//! instance to its object, and the statistics are `stats-<instance>.npz`.
//!
//! Features are cached per unit under `WORKDIR/.relay/cache/metrics/<key>/`, keyed by what
//! the images are (the input stage's fingerprint, or a file's digest) and the network's
//! sha256: an interrupted run resumes where it stopped, and every sample instance and
//! metrics stage shares the reference's features. The folder can be deleted at any time.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    parse_params, Cancelled, Input, Outcome, ParamError, Params, PlanContext, Resources,
    StageContext, StageKind,
};
use crate::metrics::run::Monitor;
use crate::metrics::{
    compute, load_network, FeatureStore, ImageSource, Job, Metric, MetricsError, RefInput,
};

pub struct Metrics;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsParams {
    /// A stage in `needs:`, or a path (ADM reference batch `.npz`, folder of images).
    reference: String,
    /// The pytorch-fid weights (`.pth` or `.safetensors`), a path or `hf://`.
    inception: String,
    /// Default: the sample stages in `needs:`.
    #[serde(default)]
    samples: Option<String>,
    /// Which images of a multi-resolution data stage (`KEY.256.png`); default: the samples'.
    #[serde(default)]
    resolution: Option<u32>,
    /// Default: all five (the Inception Score only when the weights have the classifier).
    #[serde(default)]
    metrics: Option<Vec<String>>,
    /// Images per network batch (does not change a number).
    #[serde(default = "default_batch")]
    batch: usize,
}

fn default_batch() -> usize {
    50
}

fn parse_metrics(list: &Option<Vec<String>>) -> Result<Option<Vec<Metric>>, ParamError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::new();
    for m in list {
        let metric = Metric::parse(m).ok_or_else(|| {
            ParamError::new("metrics", format!("unknown metric `{m}`"))
                .with_hint("known: fid, sfid, is, precision, recall")
        })?;
        if !out.contains(&metric) {
            out.push(metric);
        }
    }
    if out.is_empty() {
        return Err(
            ParamError::new("metrics", "`metrics` is empty").with_hint("leave it out for all five")
        );
    }
    Ok(Some(out))
}

fn is_path(s: &str) -> bool {
    s.contains('/') || s.ends_with(".npz") || crate::hub::HfUri::is_hf(s)
}

/// Whether input instance `name` is the stage `want` (or one of its instances).
fn names(want: &str, name: &str) -> bool {
    name == want || name.strip_prefix(want).is_some_and(|r| r.starts_with('@'))
}

impl StageKind for Metrics {
    fn name(&self) -> &'static str {
        "metrics"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "FID, sFID, IS, precision and recall of sample stages against a reference (FID Inception-v3)"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: MetricsParams = parse_params(with)?;
        parse_metrics(&p.metrics)?;
        if p.batch == 0 {
            return Err(ParamError::new("batch", "`batch` must be at least 1"));
        }
        Ok(())
    }
    fn check_inputs(&self, with: &Params, inputs: &[(&str, &str)]) -> Result<(), ParamError> {
        let p: MetricsParams = parse_params(with)?;
        if !is_path(&p.reference)
            && !inputs
                .iter()
                .any(|(i, s)| *s == p.reference || *i == p.reference)
        {
            let known: Vec<&str> = inputs.iter().map(|(i, _)| *i).collect();
            return Err(ParamError::new(
                "reference",
                format!(
                    "`{}` is neither a stage in `needs:` nor a path",
                    p.reference
                ),
            )
            .with_hint(format!(
                "stages in `needs:`: {}; a file is e.g. ref/VIRTUAL_imagenet256_labeled.npz",
                known.join(", ")
            )));
        }
        Ok(())
    }
    fn resumable(&self) -> bool {
        true
    }
    fn resources(&self, _with: &Params) -> Resources {
        Resources {
            gpu: true,
            fan_out: false,
        }
    }
    fn fingerprint_extra(&self, cx: &PlanContext<'_>, with: &Params) -> anyhow::Result<Value> {
        // Files outside the pipeline's stages are fingerprinted by content.
        let p: MetricsParams = parse_params(with)?;
        let digest = |spec: &str| -> anyhow::Result<String> {
            if crate::hub::HfUri::is_hf(spec) {
                let uri = crate::hub::HfUri::parse(spec)?;
                let commit = crate::hub::Hub::new(None)?.resolve_commit(&uri)?;
                return Ok(uri.pinned(&commit));
            }
            let path = cx.pipeline_dir.join(spec);
            crate::base::digest::digest_path(&path)
                .with_context(|| format!("`{spec}` ({}) cannot be read", path.display()))
        };
        let mut extra = Map::new();
        extra.insert("inception".into(), json!(digest(&p.inception)?));
        if is_path(&p.reference) {
            extra.insert("reference".into(), json!(digest(&p.reference)?));
        }
        if let Some(s) = &p.samples {
            extra.insert("samples".into(), json!(digest(s)?));
        }
        Ok(Value::Object(extra))
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: MetricsParams = parse_params(&cx.params)?;
        let device = cx.device.device()?;
        let fail = |e: MetricsError| stage_error(cx, e);

        // The network.
        let weights = crate::hub::resolve_local_or_hf(&p.inception, &cx.pipeline_dir, None)
            .with_context(|| format!("`inception: {}`", p.inception))?;
        let net = load_network(weights.path(), &p.inception, &device).map_err(fail)?;
        let requested = parse_metrics(&p.metrics)?;
        let metrics = requested.clone().unwrap_or_else(|| {
            Metric::ALL
                .into_iter()
                .filter(|m| *m != Metric::Is || net.net.has_classifier())
                .collect()
        });
        if requested.is_none() && !net.net.has_classifier() {
            cx.progress.log(format!(
                "{} has no classifier: no Inception Score",
                p.inception
            ));
        }
        let cache = cx.workdir.join(".relay").join("cache").join("metrics");
        let key = |what: &str| cache.join(cache_key(what, &net.sha256));

        // The sample sets.
        let mut sets: Vec<(String, ImageSource, PathBuf)> = Vec::new();
        if let Some(s) = &p.samples {
            let path = cx.resolve_path(s);
            let digest = crate::base::digest::digest_path(&path)
                .with_context(|| format!("`samples: {s}`"))?;
            sets.push((
                s.clone(),
                ImageSource::open(&path, None).map_err(fail)?,
                key(&digest),
            ));
        } else {
            for i in cx
                .inputs
                .iter()
                .filter(|i| i.kind == "sample" && !names(&p.reference, &i.name))
            {
                let src = ImageSource::open(&i.dir, None).map_err(fail)?;
                sets.push((i.name.clone(), src, key(&i.fingerprint)));
            }
        }
        if sets.is_empty() {
            bail!(
                "stage `{}`: no samples: list a `sample` stage under `needs:` or give `samples:`",
                cx.name
            );
        }

        // The reference.
        let resolution = p.resolution.or_else(|| sample_resolution(&cx.inputs));
        let (reference, ref_store) = if is_path(&p.reference) {
            let r = crate::hub::resolve_local_or_hf(&p.reference, &cx.pipeline_dir, None)?;
            let path = r.path().to_path_buf();
            let digest = crate::base::digest::digest_path(&path)
                .with_context(|| format!("`reference: {}` ({})", p.reference, path.display()))?;
            if path.is_dir() {
                let src = ImageSource::open(&path, resolution).map_err(fail)?;
                let describe = json!({ "images": r.record() });
                (
                    RefInput::Images(src, as_map(describe)),
                    key(&format!("{digest}/{resolution:?}")),
                )
            } else {
                (RefInput::Npz(path), key(&digest))
            }
        } else {
            let input = cx
                .inputs
                .iter()
                .find(|i| names(&p.reference, &i.name))
                .with_context(|| format!("`reference: {}` is not in `needs:`", p.reference))?;
            let src = ImageSource::open(&input.dir, resolution).map_err(fail)?;
            let describe = json!({ "stage": input.name, "kind": input.kind, "resolution": resolution, "fingerprint": input.fingerprint });
            (
                RefInput::Images(src, as_map(describe)),
                key(&format!("{}/{resolution:?}", input.fingerprint)),
            )
        };

        // Evaluate each set.
        let mon = StageMon(cx);
        let mut results = Map::new();
        let mut images = 0u64;
        for (name, src, store) in &sets {
            let job = Job {
                samples: src,
                sample_store: FeatureStore::new(store),
                reference: reference.clone(),
                reference_store: FeatureStore::new(&ref_store),
                metrics: metrics.clone(),
                batch: p.batch,
            };
            let done = compute(&job, &net, &device, &mon).map_err(fail)?;
            let stats = if sets.len() == 1 {
                "stats.npz".to_string()
            } else {
                format!("stats-{}.npz", file_safe(name))
            };
            crate::metrics::evaluate::write_stats(&cx.out.join(&stats), &done.samples)
                .map_err(fail)?;
            cx.progress
                .log(format!("{name}: {}", summary_line(&done.metrics)));
            images += done.samples.count as u64;
            let mut m = done.metrics;
            m.insert("samples".into(), json!(name));
            m.insert("statistics".into(), json!(stats));
            results.insert(name.clone(), Value::Object(m));
        }
        let doc = if sets.len() == 1 {
            results.values().next().cloned().expect("one")
        } else {
            Value::Object(results.clone())
        };
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        crate::util::write_atomic(&cx.out.join("metrics.json"), text.as_bytes())?;

        let mut info = Map::new();
        if let Value::Object(flat) = &doc {
            if sets.len() == 1 {
                for m in &metrics {
                    if let Some(v) = flat.get(m.key()) {
                        info.insert(m.key().into(), v.clone());
                    }
                }
            }
        }
        info.insert("results".into(), Value::Object(results));
        Ok(Outcome {
            images: Some(images),
            info,
            partial: false,
        })
    }
}

/// A cache folder name for image set `what` under network `sha`.
fn cache_key(what: &str, sha: &str) -> String {
    crate::util::sha256_hex(format!("relay-metrics-features/1\n{what}\n{sha}").as_bytes())[..32]
        .to_string()
}

/// The resolution column of the first sample input's manifest.
fn sample_resolution(inputs: &[Input]) -> Option<u32> {
    let i = inputs.iter().find(|i| i.kind == "sample")?;
    let (cols, rows) = crate::manifest::read_rows(&i.dir.join("manifest.parquet")).ok()?;
    let c = cols.iter().position(|c| c == "resolution")?;
    rows.first()?[c].as_u64().map(|r| r as u32)
}

fn as_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `fid 12.3456, sfid ..., precision 0.71 (...)` for the log.
fn summary_line(m: &Map<String, Value>) -> String {
    Metric::ALL
        .iter()
        .filter_map(|k| {
            m.get(k.key())
                .and_then(Value::as_f64)
                .map(|v| format!("{} {v:.4}", k.key()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn stage_error(cx: &StageContext, e: MetricsError) -> anyhow::Error {
    match e {
        MetricsError::Cancelled => anyhow::Error::new(Cancelled),
        e => anyhow::Error::new(e).context(format!("stage `{}` ({})", cx.name, cx.kind)),
    }
}

struct StageMon<'a>(&'a StageContext);

impl Monitor for StageMon<'_> {
    fn start(&self, len: u64, what: &str) {
        self.0.progress.start(Some(len), "img");
        self.0.progress.message(what.to_string());
    }
    fn inc(&self, n: u64) {
        self.0.progress.inc(n)
    }
    fn log(&self, line: &str) {
        self.0.progress.log(line)
    }
    fn stopped(&self) -> bool {
        self.0.cancel.is_cancelled()
    }
}
