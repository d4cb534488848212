//! Sample-quality metrics as ADM's evaluator (Dhariwal & Nichol 2021) reports them: FID,
//! sFID, Inception Score, precision and recall, on the FID Inception-v3
//! ([`crate::model::inception`]). A library: no stage context, no tokio; progress and
//! cancellation come in as callbacks.
//!
//! 1. [`images`]: open the samples and the reference (a sample stage's folder, a data
//!    stage's shards, an `.npz` with `arr_0`, a folder of images), listed in units.
//! 2. [`features`]: run the network unit by unit; each unit's features are cached in a
//!    [`FeatureStore`] folder, so an interrupted run resumes.
//! 3. [`evaluate`]: read the units back into float64 statistics ([`frechet::Moments`]),
//!    the Inception Score ([`score`]) and pool3 rows for precision/recall ([`manifold`]);
//!    compute the metrics against the [`evaluate::Reference`].
//! 4. [`run`]: the whole job, shared by the `metrics` stage, `relay metrics` and `relay stats`.
//!
//! Memory stays flat in the number of images except for precision/recall, which hold the
//! pool3 rows of both sets (8 KB per image), as ADM's evaluator does.

pub mod bench;
pub mod evaluate;
pub mod features;
pub mod frechet;
pub mod images;
pub mod manifold;
pub mod run;
pub mod score;

pub use evaluate::{Metric, Reference, SetSummary};
pub use features::FeatureStore;
pub use images::ImageSource;
pub use run::{compute, load_network, Job, Network, RefInput};

use crate::data::DataError;

/// Errors of the metrics library. [`MetricsError::is_bad_input`] tells the user-caused ones
/// (exit code 2 at the command line).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A file or parameter the user gave is not usable; the message names it.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the Inception network failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Numeric(String),
    #[error("{0}")]
    Io(String),
    #[error("cancelled")]
    Cancelled,
}

impl MetricsError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            MetricsError::BadInput(_) => true,
            MetricsError::Data(e) => !matches!(e, DataError::Io { .. } | DataError::Cancelled),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against NumPy/SciPy on feature sets both sides make from the same formula
    //! (`tests/data/metrics/stats.json`, scripts/make_inception_vectors.py).

    use candle_core::Device;
    use serde_json::Value;

    use super::frechet::{frechet_distance, Moments};
    use super::manifold::{precision_recall, to_tensor, NHOOD};
    use super::score::InceptionScore;
    use crate::model::inception::synthetic::uniform;

    /// The script's `feature_set`: n × d float32 rows.
    fn feature_set(family: &str, name: &str, n: usize, d: usize, shift: f64) -> Vec<f32> {
        let u = uniform(name, n * d);
        let scale: Vec<f64> = uniform(&format!("{family}/scale"), d)
            .iter()
            .map(|v| 0.2 + 1.5 * (0.5 + 0.5 * v))
            .collect();
        let offset = uniform(&format!("{family}/offset"), d);
        let factor = uniform(&format!("{name}/factor"), n);
        let load = uniform(&format!("{family}/load"), d);
        let mut out = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let x = u[i * d + j] * scale[j] + shift * offset[j];
                out.push((x + factor[i] * load[j]) as f32);
            }
        }
        out
    }

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metrics/stats.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn fid_and_precision_recall_match_numpy_and_scipy() {
        for case in vectors()["fid_pr"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let d = case["dims"].as_u64().unwrap() as usize;
            let (n1, n2) = (
                case["n_ref"].as_u64().unwrap() as usize,
                case["n_sample"].as_u64().unwrap() as usize,
            );
            let a = feature_set(name, &format!("{name}/a"), n1, d, 0.0);
            let b = feature_set(
                name,
                &format!("{name}/b"),
                n2,
                d,
                case["shift"].as_f64().unwrap(),
            );
            let fit = |x: &[f32]| {
                let mut m = Moments::new(d);
                // In two batches, as units arrive.
                let half = (x.len() / d / 2) * d;
                m.add(&x[..half]);
                m.add(&x[half..]);
                m.finish().unwrap()
            };
            let (ga, gb) = (fit(&a), fit(&b));
            let sum: f64 = ga.mu.iter().sum();
            assert!(
                (sum - case["mu_ref_sum"].as_f64().unwrap()).abs() < 1e-9,
                "{name}: mean"
            );
            let tr: f64 = (0..d).map(|i| ga.sigma[i * d + i]).sum();
            assert!(
                (tr / case["sigma_ref_trace"].as_f64().unwrap() - 1.0).abs() < 1e-12,
                "{name}: trace"
            );
            assert!(
                (ga.sigma[1] - case["sigma_ref_01"].as_f64().unwrap()).abs() < 1e-12,
                "{name}: Σ[0,1]"
            );
            let fid = frechet_distance(&ga, &gb).unwrap();
            let want = case["fid"].as_f64().unwrap();
            assert!(
                (fid / want - 1.0).abs() < 1e-6,
                "{name}: FID {fid} vs scipy {want}"
            );
            assert!(
                frechet_distance(&ga, &ga).unwrap().abs() < 1e-9,
                "{name}: FID to itself"
            );
            let pr = precision_recall(
                &to_tensor(&a, d, &Device::Cpu).unwrap(),
                &to_tensor(&b, d, &Device::Cpu).unwrap(),
                NHOOD,
            )
            .unwrap();
            assert_eq!(
                pr.precision_count as u64,
                case["precision_count"].as_u64().unwrap(),
                "{name}: precision"
            );
            assert_eq!(
                pr.recall_count as u64,
                case["recall_count"].as_u64().unwrap(),
                "{name}: recall"
            );
        }
    }

    #[test]
    fn inception_score_matches_numpy() {
        for case in vectors()["inception_score"].as_array().unwrap() {
            let (n, c) = (
                case["n"].as_u64().unwrap() as usize,
                case["classes"].as_u64().unwrap() as usize,
            );
            let logits: Vec<f32> = feature_set("is", "is/logits", n, c, 0.0)
                .iter()
                .map(|x| x * 3.0)
                .collect();
            let mut s = InceptionScore::new(c, case["split"].as_u64().unwrap() as usize);
            s.add(&logits[..n / 3 * c]);
            s.add(&logits[n / 3 * c..]);
            let got = s.finish().unwrap();
            let want = case["inception_score"].as_f64().unwrap();
            assert!(
                (got / want - 1.0).abs() < 1e-9,
                "split {}: {got} vs {want}",
                case["split"]
            );
        }
    }
}
