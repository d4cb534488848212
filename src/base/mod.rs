//! What the executor and the stage kinds share about a workdir, so that neither imports the
//! other: cancellation, output digests, run records, file locks. Beside [`crate::util`]
//! (generic helpers) it is the bottom layer: it imports nothing of relay but `util`.
//!
//! * [`cancel`]: the cooperative Ctrl-C flag every running stage checks.
//! * [`digest`]: listings and content digests of output folders.
//! * [`record`]: run records (`runs.jsonl`) and what went into a fingerprint.
//! * [`lock`]: advisory file locks (`flock`), with the errno when locking itself fails.

pub mod cancel;
pub mod digest;
pub mod lock;
pub mod record;
