//! Deterministic crash points for the fault tests: `RELAY_CRASH_AT=NAME` (or `NAME:N`, the
//! N-th time the point is reached, counting from 1) makes the process abort at that point —
//! no destructors, no flushing, as kill -9 would leave it. Only the tests set it; unset, a
//! point costs one relaxed atomic load.
//!
//! `RELAY_CRASH_WORKER=I` limits the crash to worker I of a fan-out (the process whose
//! `RELAY_WORKER_INDEX` is I): its parent, which redoes the worker's shard, does not crash.
//!
//! The points are the commit steps of everything that must survive a crash:
//! `publish:*` (a stage's output into place, [`crate::exec::commit`]), `shard:*` (a tar
//! shard and its manifest part), `snapshot:*` (a training snapshot). `relay` documents the
//! list in README's reliability section.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The point to crash at and after how many passes.
fn target() -> &'static Option<(String, u64)> {
    static T: OnceLock<Option<(String, u64)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var("RELAY_CRASH_AT").ok()?;
        if let Ok(w) = std::env::var("RELAY_CRASH_WORKER") {
            if std::env::var("RELAY_WORKER_INDEX").ok() != Some(w) {
                return None;
            }
        }
        Some(match v.rsplit_once(':') {
            Some((name, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (name.to_string(), n.parse().unwrap_or(1))
            }
            _ => (v, 1),
        })
    })
}

/// Abort here if `RELAY_CRASH_AT` names this point (and this is its N-th pass).
pub fn point(name: &str) {
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let Some((want, n)) = target() else { return };
    if want == name && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("relay: crash point `{name}` reached (RELAY_CRASH_AT): aborting");
        std::process::abort();
    }
}
