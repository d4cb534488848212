//! Integration tests: they drive the built `relay` binary on temporary folders.
//!
//! | module   | what it covers |
//! |----------|----------------|
//! | `data`   | dataset preparation: source stages, shard, downsample (issue 3) |
//! | `common` | helpers: a temp project, running the binary, reading records |
//! | `spec`   | validation errors: positions, hints, cycles, exit code 2 |
//! | `runner` | caching, plan explanations, concurrency, matrix, failures, kill -9 |
//! | `many`   | many processes, one workdir: exec per stage, locks, crash points, ranks, injection (issue 15) |
//! | `devices` | every device of the machine: sampling fan-out, parallel and data-parallel training, device errors (issue 16) |
//! | `sample` | sampling jobs: shards, manifest, workers, resume, export |
//! | `slurm`  | the Slurm executor on a real one-node Slurm: job arrays, merge, resubmission |
//! | `hub`    | the `publish` stage and `hf://` checkpoints against a stand-in Hub (issue 7) |
//! | `train`  | the `train` stage: learning check, exact resume, NaN loss, a pipeline (issue 5) |
//! | `metrics` | the `metrics` stage, `relay metrics`/`stats`/`show`: numbers, cache, kill -9, bad input (issue 18) |
//! | `pipelines` | the shipped pipelines on tiny substitutes; the quickstart end to end (issue 8) |
//! | `hub_server` | the stand-in Hub: the endpoints hf-hub calls, in memory |

mod common;
mod data;
mod devices;
mod hub;
mod hub_server;
mod many;
mod metrics;
mod pipelines;
mod runner;
mod sample;
mod slurm;
mod spec;
mod train;
