//! `relay`: a pipeline-as-dataflow job runner for cascaded ("relay") diffusion research.
//!
//! ```text
//! pipelines/*.yaml ─► spec ─► plan (validated DAG) ─► exec (tokio) ─► stage kinds
//!  (what the user wrote) (what we will do)           (how we run it)   (adapters)
//! ```
//!
//! * [`spec`]: parse the YAML, resolve templates, variables and overrides. No tokio, no candle.
//! * [`plan`]: the validated DAG (matrix fan-out, cycle check).
//! * [`exec`]: runs a plan (freshness, records, progress); the only module that uses tokio.
//! * [`stage`]: the stage kinds: where libraries meet.

pub mod cli;
pub mod device;
pub mod diffusion;
pub mod exec;
pub mod plan;
pub mod spec;
pub mod stage;
pub mod util;
