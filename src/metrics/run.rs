//! One metrics job from start to end, shared by the `metrics` stage, `relay metrics` and
//! `relay stats`:
//!
//! 1. check what can be checked cheaply (the reference batch's arrays, the sample count);
//! 2. features of the samples, unit by unit, into their [`FeatureStore`] (resumable);
//! 3. the reference's statistics: taken from its `.npz` where it has them, computed from its
//!    images (into their own store) where it does not or where precision/recall need them;
//! 4. the metrics, with the network's sha256 beside them.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::{json, Map, Value};

use super::evaluate::{
    evaluate, needs_rows, read_reference_npz, summarize, Metric, Reference, SetSummary,
};
use super::features::{extract, FeatureStore};
use super::images::ImageSource;
use super::manifold::NHOOD;
use super::MetricsError;
use crate::model::inception::{weights, FidInception};

/// The network and where it came from.
pub struct Network {
    pub net: FidInception,
    /// sha256 of the weights file.
    pub sha256: String,
    /// The file as the user named it (a path or `hf://...`).
    pub file: String,
}

/// Load the weights at `path` (`shown`: how the user named it) onto `device`.
pub fn load_network(path: &Path, shown: &str, device: &Device) -> Result<Network, MetricsError> {
    let sha256 = crate::util::sha256_file(path).map_err(|e| {
        MetricsError::BadInput(format!("cannot read the Inception weights {shown}: {e}"))
    })?;
    let net = weights::load(path, device).map_err(|e| MetricsError::BadInput(format!("{e}")))?;
    Ok(Network {
        net,
        sha256,
        file: shown.to_string(),
    })
}

/// The reference, as given.
#[derive(Debug, Clone)]
pub enum RefInput {
    /// An ADM reference batch (`mu`, `sigma`, `mu_s`, `sigma_s`, and/or `arr_0`).
    Npz(PathBuf),
    /// Images whose statistics are computed (a data stage, a folder), and how to name them.
    Images(ImageSource, Map<String, Value>),
}

/// Progress, logging and cancellation, from the caller.
pub trait Monitor {
    fn start(&self, len: u64, what: &str);
    fn inc(&self, n: u64);
    fn log(&self, line: &str);
    fn stopped(&self) -> bool;
}

/// What to compute.
pub struct Job<'a> {
    pub samples: &'a ImageSource,
    pub sample_store: FeatureStore,
    pub reference: RefInput,
    /// Where the reference's image features are cached.
    pub reference_store: FeatureStore,
    pub metrics: Vec<Metric>,
    pub batch: usize,
}

/// The outcome: the `metrics.json` object and the samples' statistics.
pub struct Computed {
    pub metrics: Map<String, Value>,
    pub samples: SetSummary,
}

fn features_of(
    what: &str,
    src: &ImageSource,
    store: &FeatureStore,
    net: &Network,
    device: &Device,
    batch: usize,
    mon: &dyn Monitor,
) -> Result<(), MetricsError> {
    mon.start(src.len() as u64, what);
    let t0 = std::time::Instant::now();
    let done = extract(
        src,
        &net.net,
        device,
        store,
        batch,
        &mut |n| mon.inc(n as u64),
        &|| mon.stopped(),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    if done.units_cached > 0 {
        mon.log(&format!(
            "{what}: {} of {} units cached, {} images computed",
            done.units_cached,
            src.units(),
            done.computed
        ));
    }
    if done.computed > 0 {
        mon.log(&format!(
            "{what}: {} images in {secs:.1} s ({:.2} images/s) from {}",
            done.computed,
            done.computed as f64 / secs.max(1e-9),
            src.describe()
        ));
    }
    Ok(())
}

/// Run `job` with `net` on `device`.
pub fn compute(
    job: &Job,
    net: &Network,
    device: &Device,
    mon: &dyn Monitor,
) -> Result<Computed, MetricsError> {
    let rows = needs_rows(&job.metrics);
    let want_is = job.metrics.contains(&Metric::Is);
    if want_is && !net.net.has_classifier() {
        return Err(MetricsError::BadInput(format!(
            "`is` needs the network's classifier (`fc.weight`), which {} lacks; leave it out of the metrics",
            net.file
        )));
    }

    // 1. Cheap checks first.
    let need = if rows { NHOOD + 1 } else { 2 };
    if job.samples.len() < need {
        return Err(MetricsError::BadInput(format!(
            "{} holds {} images; {} needs at least {need}{}",
            job.samples.describe(),
            job.samples.len(),
            if rows {
                "precision/recall"
            } else {
                "a covariance"
            },
            if rows {
                format!(" (k + 1, k = {NHOOD})")
            } else {
                String::new()
            },
        )));
    }
    let mut reference = Reference::default();
    let mut ref_images = None;
    match &job.reference {
        RefInput::Npz(path) => {
            let (pool, spatial, has_images) = read_reference_npz(path)?;
            let fid = job.metrics.contains(&Metric::Fid) && pool.is_none();
            let sfid = job.metrics.contains(&Metric::Sfid) && spatial.is_none();
            reference
                .describe
                .insert("npz".into(), json!(path.display().to_string()));
            reference.describe.insert(
                "statistics".into(),
                json!(if pool.is_some() {
                    "from the file"
                } else {
                    "computed from arr_0"
                }),
            );
            if (rows || fid || sfid) && has_images {
                ref_images = Some(ImageSource::open(path, None)?);
            } else if rows {
                return Err(MetricsError::BadInput(format!(
                    "precision/recall need the reference images (`arr_0`), which {} does not have; leave them out of the metrics",
                    path.display()
                )));
            }
            reference.pool = pool;
            reference.spatial = spatial;
        }
        RefInput::Images(src, describe) => {
            reference.describe = describe.clone();
            ref_images = Some(src.clone());
        }
    }
    if let Some(src) = &ref_images {
        if rows && src.len() < NHOOD + 1 {
            return Err(MetricsError::BadInput(format!(
                "the reference ({}) holds {} images; precision/recall need at least {}",
                src.describe(),
                src.len(),
                NHOOD + 1
            )));
        }
    }

    // 2. The samples.
    features_of(
        "samples",
        job.samples,
        &job.sample_store,
        net,
        device,
        job.batch,
        mon,
    )?;
    let samples = summarize(&job.sample_store, job.samples.units(), rows, want_is)?;

    // 3. The reference's images.
    if let Some(src) = &ref_images {
        features_of(
            "reference",
            src,
            &job.reference_store,
            net,
            device,
            job.batch,
            mon,
        )?;
        let s = summarize(&job.reference_store, src.units(), rows, false)?;
        reference.describe.insert("count".into(), json!(s.count));
        reference.pool = reference.pool.or(Some(s.pool));
        reference.spatial = reference.spatial.or(Some(s.spatial));
        reference.pool_rows = s.pool_rows;
    }

    // 4. The numbers.
    let mut metrics = evaluate(&samples, &reference, &job.metrics, device)?;
    metrics.insert(
        "network".into(),
        json!({ "sha256": net.sha256, "file": net.file }),
    );
    Ok(Computed { metrics, samples })
}
