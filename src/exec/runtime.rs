//! The tokio runtime a run drives its executor on, with Ctrl-C wired to cancellation.

use super::{Executor, RunOptions, RunReport};
use crate::base::cancel::Cancel;
use crate::plan::Plan;

/// Run `plan` to its end on a fresh runtime; the first Ctrl-C cancels it.
pub fn run_blocking(plan: Plan, opts: RunOptions) -> anyhow::Result<RunReport> {
    let exec = Executor::new(plan, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        tokio::spawn(cancel_on_ctrl_c(exec.cancel_handle()));
        exec.run().await
    })
}

/// The first Ctrl-C sets `cancel` (stages stop at their next safe point); a second one
/// exits at once with 130.
pub async fn cancel_on_ctrl_c(cancel: Cancel) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!(
            "\ninterrupt: stopping stages at their next safe point (Ctrl-C again to abort now)"
        );
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(130);
        }
    }
}
