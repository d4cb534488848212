//! Cooperative cancellation: one flag shared by the executor (set on Ctrl-C) and every
//! running stage (checked at safe points).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Returned (inside `anyhow::Error`) by a stage that stopped because it was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// A cooperative cancellation flag shared by the executor and every running stage.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancellation was requested: call at safe points with `?`.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}
