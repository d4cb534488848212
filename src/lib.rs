//! `relay`: a pipeline-as-dataflow job runner for cascaded ("relay") diffusion research.
//!
//! ```text
//! pipelines/*.yaml ─► spec ─► plan (validated DAG) ─► exec (tokio) ─► stage kinds ─► data | diffusion | model | manifest
//!  (what the user wrote) (what we will do)           (how we run it)   (adapters)      (libraries)
//! ```
//!
//! * [`spec`]: parse the YAML, resolve templates, variables and overrides. No tokio, no candle.
//! * [`plan`]: the validated DAG (matrix fan-out, cycle check) and freshness of every stage.
//! * [`exec`]: runs a plan; the only module that uses tokio and indicatif.
//! * [`stage`]: the stage kinds (`command`, `source/*`, `shard`, `downsample`, ...): where libraries meet.
//! * [`diffusion`]: EDM and relay (blurring) diffusion math: tensors in, tensors out.
//! * [`model`]: the ADM U-Net in candle.
//! * [`data`]: images, WebDataset shards, dataset descriptors.
//! * [`manifest`]: Arrow schemas and Parquet readers/writers.

pub mod base;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod exec;
pub mod hub;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod sample;
pub mod spec;
pub mod stage;
pub mod train;
pub mod util;
