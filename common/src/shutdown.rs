//! The one shutdown primitive: a [`CancellationToken`] cancelled on SIGINT or SIGTERM.
//!
//! Every long-running loop `select!`s on the token; owners then drain (finish and commit
//! in-flight batches, release leases) before returning.

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Cancels `token` when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
                        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                        _ = token.cancelled() => return,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install SIGTERM handler; only Ctrl-C stops");
                    tokio::select! {
                        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
                        _ = token.cancelled() => return,
                    }
                }
            }
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    });
}
