//! One unit's supervisor: runs its task, and decides what each ending means.
//!
//! * cancelled: the unit was stopped (its in-flight batch committed): `stopped`;
//! * a transient or conflict error, a panic, or an ending nobody asked for: reported
//!   (`backoff`, or `failed` with the panic's message) and started again after a backoff
//!   that doubles up to [`MAX_BACKOFF`];
//! * a permanent error (bad data, bad spec; see [`WorkerError::retry`]): `failed` with the
//!   message, and the unit stays down until its assignment or spec changes.
//!
//! A panic is caught here rather than left to the unit's thread: before, a panicked unit
//! kept reporting its last state (`running`) until the worker stopped.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use smelter_proto::TaskState;
use tokio_util::sync::CancellationToken;

use crate::tasks::Progress;
use crate::{Result, WorkerError};

/// The first pause before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs the task `start` makes, again and again, until it is cancelled or fails for good.
/// `what` names the unit in logs.
pub async fn supervise<F, Fut>(
    what: &str,
    mut start: F,
    progress: Progress,
    cancel: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        progress.set_state(TaskState::Starting);
        let ended = AssertUnwindSafe(start()).catch_unwind().await;
        let error = match ended {
            Ok(Ok(())) if cancel.is_cancelled() => {
                progress.set_state(TaskState::Stopped);
                return;
            }
            Ok(Ok(())) => WorkerError::Panicked {
                message: "the task returned without being stopped".into(),
            },
            Ok(Err(error)) => error,
            Err(panic) => WorkerError::Panicked {
                message: panic_message(panic.as_ref()),
            },
        };
        if cancel.is_cancelled() {
            tracing::warn!(unit = what, %error, "task ended with an error while stopping");
            progress.update(|r| {
                r.state = TaskState::Failed as i32;
                r.error = error.to_string();
            });
            return;
        }
        if !error.is_retryable() {
            tracing::error!(unit = what, %error, "task failed");
            progress.update(|r| {
                r.state = TaskState::Failed as i32;
                r.error = error.to_string();
            });
            return;
        }
        let state = match error {
            WorkerError::Panicked { .. } => TaskState::Failed,
            _ => TaskState::Backoff,
        };
        tracing::warn!(unit = what, %error, retry_in_ms = backoff.as_millis() as u64, "task failed; restarting");
        progress.update(|r| {
            r.state = state as i32;
            r.error = error.to_string();
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// A task that panics is reported failed with the panic's message and started again;
    /// once it runs, its state is its own.
    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_its_status_says_why() {
        let progress = Progress::notifying(Arc::new(Notify::new()));
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let running = Arc::new(Notify::new());
        let unit = {
            let (progress, cancel, starts, running) = (
                progress.clone(),
                cancel.clone(),
                starts.clone(),
                running.clone(),
            );
            tokio::spawn(async move {
                let task_progress = progress.clone();
                let task_cancel = cancel.clone();
                supervise(
                    "test",
                    move || {
                        let n = starts.fetch_add(1, Ordering::SeqCst);
                        let (progress, cancel, running) =
                            (task_progress.clone(), task_cancel.clone(), running.clone());
                        async move {
                            if n == 0 {
                                panic!("decoder hit a bad record at offset 7");
                            }
                            progress.set_state(TaskState::Running);
                            running.notify_one();
                            cancel.cancelled().await;
                            Ok(())
                        }
                    },
                    progress,
                    cancel,
                )
                .await
            })
        };
        // The panic is reported before the restart's backoff ends.
        let report = loop {
            let report = progress.snapshot(None);
            if report.state() == TaskState::Failed {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            report
                .error
                .contains("decoder hit a bad record at offset 7"),
            "{}",
            report.error
        );
        running.notified().await;
        assert_eq!(starts.load(Ordering::SeqCst), 2, "restarted once");
        assert_eq!(progress.snapshot(None).state(), TaskState::Running);
        assert!(progress.snapshot(None).error.is_empty());
        cancel.cancel();
        unit.await.expect("the supervisor itself never panics");
        assert_eq!(progress.snapshot(None).state(), TaskState::Stopped);
    }

    /// A permanent error stops the unit in `failed`; a transient one backs off and retries.
    #[tokio::test]
    async fn permanent_errors_stop_and_transient_ones_retry() {
        let progress = Progress::notifying(Arc::new(Notify::new()));
        let starts = AtomicU32::new(0);
        supervise(
            "test",
            || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                async move {
                    Err(if n < 2 {
                        WorkerError::Source {
                            source_name: "events".into(),
                            message: "brokers unreachable".into(),
                        }
                    } else {
                        WorkerError::Arrow(arrow::error::ArrowError::SchemaError(
                            "price: expected double".into(),
                        ))
                    })
                }
            },
            progress.clone(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        let report = progress.snapshot(None);
        assert_eq!(report.state(), TaskState::Failed);
        assert!(
            report.error.contains("price: expected double"),
            "{}",
            report.error
        );
    }
}
