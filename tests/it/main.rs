//! Integration tests: they drive the built `relay` binary on temporary folders.
//!
//! | module   | what it covers |
//! |----------|----------------|
//! | `data`   | dataset preparation: source stages, shard, downsample (issue 3) |
//! | `common` | helpers: a temp project, running the binary, reading records |
//! | `spec`   | validation errors: positions, hints, cycles, exit code 2 |
//! | `runner` | caching, plan explanations, concurrency, matrix, failures, kill -9 |
//! | `sample` | sampling jobs: shards, manifest, workers, resume, export |

mod common;
mod data;
mod runner;
mod sample;
mod spec;
