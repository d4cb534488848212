//! From cached features to numbers: a set's statistics ([`summarize`]), the reference
//! ([`Reference`]: an ADM reference batch's `mu`/`sigma`/`mu_s`/`sigma_s` and the features
//! of its `arr_0`, or the features of an image set), and the metrics ([`evaluate`]), written
//! as the `metrics.json` object. The sample statistics go to an ADM-compatible `.npz`
//! ([`write_stats`]).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::features::FeatureStore;
use super::frechet::{frechet_distance, Gaussian, Moments};
use super::manifold::{precision_recall, to_tensor, NHOOD};
use super::score::{InceptionScore, SPLIT_SIZE};
use super::MetricsError;
use crate::data::npy::{Npz, NpzWriter};
use crate::model::inception::{LOGITS_DIMS, POOL_DIMS, SPATIAL_DIMS};

/// One metric of ADM's evaluator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Fid,
    Sfid,
    Is,
    Precision,
    Recall,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::Is,
        Metric::Precision,
        Metric::Recall,
    ];

    /// Its key in `metrics.json` and the run record.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::Is => "inception_score",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
        }
    }

    /// `fid`, `sfid`, `is` (or `inception_score`), `precision`, `recall`.
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "fid" => Some(Metric::Fid),
            "sfid" => Some(Metric::Sfid),
            "is" | "inception_score" => Some(Metric::Is),
            "precision" => Some(Metric::Precision),
            "recall" => Some(Metric::Recall),
            _ => None,
        }
    }
}

/// A set's statistics.
#[derive(Debug, Clone)]
pub struct SetSummary {
    pub count: usize,
    /// Of pool3 (FID).
    pub pool: Gaussian,
    /// Of `mixed_6/conv` (sFID).
    pub spatial: Gaussian,
    /// When asked for and the features have logits.
    pub inception_score: Option<f64>,
    /// pool3 rows (precision/recall), when asked for.
    pub pool_rows: Option<Vec<f32>>,
}

/// Statistics of the `units` units of `store`, read one unit at a time.
pub fn summarize(
    store: &FeatureStore,
    units: usize,
    keep_rows: bool,
    want_is: bool,
) -> Result<SetSummary, MetricsError> {
    let mut pool = Moments::new(POOL_DIMS);
    let mut spatial = Moments::new(SPATIAL_DIMS);
    let mut score = InceptionScore::new(LOGITS_DIMS, SPLIT_SIZE);
    let mut rows = keep_rows.then(Vec::new);
    let mut has_logits = true;
    for u in 0..units {
        let f = store.read(u)?;
        pool.add(&f.pool);
        spatial.add(&f.spatial);
        has_logits &= f.logits.len() == f.n * LOGITS_DIMS;
        if want_is && has_logits {
            score.add(&f.logits);
        }
        if let Some(r) = rows.as_mut() {
            r.extend_from_slice(&f.pool);
        }
    }
    Ok(SetSummary {
        count: pool.count() as usize,
        pool: pool.finish()?,
        spatial: spatial.finish()?,
        inception_score: if want_is && has_logits {
            score.finish()
        } else {
            None
        },
        pool_rows: rows,
    })
}

/// What the samples are compared with.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Shown in `metrics.json` (`{"npz": ..., "count": ...}` or `{"images": ...}`).
    pub describe: Map<String, Value>,
    pub pool: Option<Gaussian>,
    pub spatial: Option<Gaussian>,
    pub pool_rows: Option<Vec<f32>>,
}

/// The statistics an ADM reference batch carries (`mu`, `sigma`, `mu_s`, `sigma_s`), and
/// whether it has images (`arr_0`). Refuses a file with neither.
pub fn read_reference_npz(
    path: &Path,
) -> Result<(Option<Gaussian>, Option<Gaussian>, bool), MetricsError> {
    let mut z = Npz::open(path)?;
    let has_images = z.has("arr_0");
    let has_stats = z.has("mu") && z.has("sigma");
    if !has_stats && !has_images {
        return Err(MetricsError::BadInput(format!(
            "{} is not an ADM reference batch: it has neither `mu`/`sigma` (statistics) nor `arr_0` (images); its arrays: {}",
            path.display(),
            z.names().join(", ")
        )));
    }
    let mut pair = |mu: &str, sigma: &str, dims: usize| -> Result<Option<Gaussian>, MetricsError> {
        if !(z.has(mu) && z.has(sigma)) {
            return Ok(None);
        }
        let (ms, m) = z.read_f64(mu)?;
        let (ss, s) = z.read_f64(sigma)?;
        if ms != [dims] || ss != [dims, dims] {
            return Err(MetricsError::BadInput(format!(
                "`{mu}`/`{sigma}` in {} are {ms:?} and {ss:?}; the FID network's are [{dims}] and [{dims}, {dims}]",
                path.display()
            )));
        }
        Ok(Some(Gaussian { mu: m, sigma: s }))
    };
    let pool = pair("mu", "sigma", POOL_DIMS)?;
    let spatial = pair("mu_s", "sigma_s", SPATIAL_DIMS)?;
    Ok((pool, spatial, has_images))
}

/// Write a set's statistics as an ADM reference batch without images (float64).
pub fn write_stats(path: &Path, s: &SetSummary) -> Result<(), MetricsError> {
    let mut w = NpzWriter::create(path)?;
    w.f64("mu", &[POOL_DIMS], &s.pool.mu)?;
    w.f64("sigma", &[POOL_DIMS, POOL_DIMS], &s.pool.sigma)?;
    w.f64("mu_s", &[SPATIAL_DIMS], &s.spatial.mu)?;
    w.f64("sigma_s", &[SPATIAL_DIMS, SPATIAL_DIMS], &s.spatial.sigma)?;
    Ok(w.finish()?)
}

/// Whether `metrics` need the reference's and samples' pool3 rows.
pub fn needs_rows(metrics: &[Metric]) -> bool {
    metrics
        .iter()
        .any(|m| matches!(m, Metric::Precision | Metric::Recall))
}

/// The metrics of `samples` against `reference`, as the `metrics.json` members (metric
/// keys, `count`, `reference`); precision/recall also give their counts.
pub fn evaluate(
    samples: &SetSummary,
    reference: &Reference,
    metrics: &[Metric],
    device: &Device,
) -> Result<Map<String, Value>, MetricsError> {
    let missing = |what: &str, m: Metric| {
        MetricsError::BadInput(format!(
            "`{}` needs {what}, which the reference ({}) does not have; leave it out of the metrics",
            m.key(),
            Value::Object(reference.describe.clone())
        ))
    };
    let mut out: BTreeMap<&str, Value> = BTreeMap::new();
    for &m in metrics {
        match m {
            Metric::Fid => {
                let r = reference
                    .pool
                    .as_ref()
                    .ok_or_else(|| missing("`mu`/`sigma`", m))?;
                out.insert(m.key(), json!(frechet_distance(&samples.pool, r)?));
            }
            Metric::Sfid => {
                let r = reference
                    .spatial
                    .as_ref()
                    .ok_or_else(|| missing("`mu_s`/`sigma_s` (or `arr_0`)", m))?;
                out.insert(m.key(), json!(frechet_distance(&samples.spatial, r)?));
            }
            Metric::Is => {
                let s = samples.inception_score.ok_or_else(|| {
                    MetricsError::BadInput(
                        "`is` needs the network's classifier (`fc.weight`), which the weights file lacks; leave it out of the metrics".into(),
                    )
                })?;
                out.insert(m.key(), json!(s));
            }
            Metric::Precision | Metric::Recall => {}
        }
    }
    if needs_rows(metrics) {
        let r = reference
            .pool_rows
            .as_ref()
            .ok_or_else(|| missing("images (`arr_0`)", Metric::Precision))?;
        let s = samples
            .pool_rows
            .as_ref()
            .expect("rows kept when precision/recall are asked for");
        let pr = precision_recall(
            &to_tensor(r, POOL_DIMS, device)?,
            &to_tensor(s, POOL_DIMS, device)?,
            NHOOD,
        )?;
        if metrics.contains(&Metric::Precision) {
            out.insert("precision", json!(pr.precision));
            out.insert("precision_count", json!(pr.precision_count));
        }
        if metrics.contains(&Metric::Recall) {
            out.insert("recall", json!(pr.recall));
            out.insert("recall_count", json!(pr.recall_count));
        }
    }
    let mut map: Map<String, Value> = out.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    map.insert("count".into(), json!(samples.count));
    map.insert(
        "reference".into(),
        Value::Object(reference.describe.clone()),
    );
    Ok(map)
}
