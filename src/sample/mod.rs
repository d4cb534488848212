//! Sampling jobs: seeds → images with a chain of stage models → tar shards, a Parquet
//! manifest and a preview grid; plus export to the standard evaluators' formats.
//!
//! 1. [`seeds`]: the seed set (`0-49999`, lists).
//! 2. [`chain`]: load 1–3 stage models and generate a batch (EDM stage, then relay stages).
//! 3. [`job`]: shards, atomic commits, resume, merge with a completeness check.
//! 4. [`export`]: the ADM evaluator's `.npz` and an EDM-style PNG tree, streaming.

pub mod chain;
pub mod export;
pub mod job;
pub mod model_folder;
pub mod seeds;
