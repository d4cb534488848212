//! `relay`: a pipeline-as-dataflow job runner for cascaded ("relay") diffusion research.
//!
//! ```text
//! pipelines/*.yaml ─► spec ─► plan (validated DAG) ─► exec (queue + drain loop) ─► stage kinds ─► train | sample | data | diffusion | model | hub | manifest
//!  (what the user wrote) (what we will do)            (how we run it)              (adapters)     (libraries)
//! ```
//!
//! Layers, top to bottom; a module imports only modules below it:
//!
//! | layer | modules |
//! |-------|---------|
//! | command line | [`cli`] (`main.rs` only parses, dispatches, prints the error chain) |
//! | running | [`exec`] (drain loop, commits, records, Slurm), [`bench`] |
//! | planning | [`plan`] (validated DAG, matrix fan-out), then [`spec`] (the YAML) |
//! | stage kinds | [`stage`]: the only place where several libraries meet |
//! | libraries | [`train`], [`sample`], [`metrics`] (use the ones below), [`hub`], [`data`], [`manifest`], [`model`], [`diffusion`] |
//! | shared bottom | [`base`] (cancellation, digests, run records, locks), [`device`], [`util`] |
//!
//! * [`exec`] drives the executor on tokio; [`hub`] drives hf-hub's async client on its own
//!   small runtime (callable from the blocking threads stages run on). Nothing else uses tokio.
//! * [`diffusion`]: EDM and relay (blurring) diffusion math, tensors in and out; [`model`]:
//!   the ADM U-Net in candle (it sees a `VarBuilder`, not a path, but for `model::checkpoint`).

pub mod base;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod exec;
pub mod hub;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod sample;
pub mod spec;
pub mod stage;
pub mod train;
pub mod util;
