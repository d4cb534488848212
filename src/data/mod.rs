//! Image data: decoding and transforms, synthetic shapes, WebDataset tar shards,
//! dataset descriptors, and the two preparation pipelines built from them.
//!
//! Plain functions and structs; no stage context, no tokio. Progress and cancellation
//! come in through a [`Monitor`]. The pieces, bottom up:
//!
//! * [`image`] — decode JPEG/PNG/WebP to RGB, deterministic PNG encode, sha256.
//! * [`resample`] — Pillow's separable resampler (box, bicubic, Lanczos, bit-exact) and
//!   the exact integer box (patch-mean) downsampling used for relay pairs.
//! * [`transform`] — `center-crop` (EDM), `center-crop-adm` (ADM), `center-crop-wide`, none.
//! * [`shapes`] — the synthetic, seeded dataset of coloured shapes.
//! * [`npy`] — NumPy `.npy` / `.npz` arrays (the evaluators' formats), streaming.
//! * [`tar`] — a byte-reproducible tar shard writer and a member index for reading.
//! * [`wds`] — reading shards through the `webdataset` crate.
//! * [`descriptor`] — `datasets/*.yaml`.
//! * [`source`] — what a source stage found (`source.json` + `index.parquet`) and how to
//!   fetch one item's bytes from it: the hand-off between a source and `shard`.
//! * [`prep`] — source → shuffled, resumable WebDataset shards + manifests (`shard`).
//! * [`pairs`] — shards → paired multi-resolution shards (`downsample`).
//! * [`bench`] — the `relay bench prep` benchmark.
//!
//! `data` writes its manifests through [`crate::manifest`]; it never imports model code.

pub mod bench;
pub mod descriptor;
pub mod image;
pub mod npy;
pub mod pairs;
pub mod prep;
pub mod resample;
pub mod shapes;
pub mod source;
pub mod tar;
pub mod transform;
pub mod wds;

use std::path::PathBuf;

use crate::manifest::ManifestError;

/// Errors of the data library. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot {op} `{}`", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a readable image: {reason}")]
    Image { path: String, reason: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

impl DataError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DataError::Io { op, path, source }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What a bad input does: skip it (to `rejects.parquet`) or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    #[default]
    Skip,
    Fail,
}

/// Progress and cancellation for long library calls (the stage adapters forward these
/// to the stage's reporter and cancellation flag).
pub trait Monitor: Sync {
    /// A unit of work of `total` items starts (`done` of them were already done: resume).
    fn start(&self, _total: u64, _done: u64) {}
    /// `n` more items done.
    fn advance(&self, _n: u64) {}
    /// A log line.
    fn note(&self, _line: &str) {}
    /// `true` once the caller wants the work to stop at the next safe point.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A monitor that reports nothing and never cancels.
pub struct Quiet;
impl Monitor for Quiet {}

/// A rayon pool with `threads` workers (0 = all cores).
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("relay-data-{i}"))
        .build()
        .map_err(|e| DataError::Invalid(format!("cannot start {threads} worker threads: {e}")))
}

/// SplitMix64: a tiny, well-mixed, seedable generator for shuffles and shapes.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
    /// Uniform integer in [0, n) (n > 0), without modulo bias worth caring about (128-bit multiply).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The order in which `shard` writes the `n` items of a source: a Fisher–Yates shuffle
/// seeded by `seed`, or the source order when `seed` is `None`.
pub fn permutation(n: usize, seed: Option<u64>) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if let Some(seed) = seed {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_5A4D_0000_0000);
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_permutation() {
        let a = permutation(1000, Some(0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, permutation(1000, Some(0)));
        assert_ne!(a, permutation(1000, Some(1)));
        assert_eq!(permutation(5, None), [0, 1, 2, 3, 4]);
    }
}
