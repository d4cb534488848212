//! Integration tests: they drive the built `relay` binary on temporary folders.
//!
//! | module   | what it covers |
//! |----------|----------------|
//! | `common` | helpers: a temp project, running the binary, reading records |
//! | `spec`   | validation errors: positions, hints, cycles, exit code 2 |
//! | `runner` | caching, plan explanations, concurrency, matrix, failures, kill -9 |

mod common;
mod runner;
mod spec;
