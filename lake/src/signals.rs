//! Word of this process's own commits, for the tasks downstream in the same process.
//!
//! A downstream task learns new upstream versions from the log alone: it probes for the
//! next commit entry every `poll_interval_ms`, and that stays the only source of truth.
//! When the commit was made in this same process (ingest and refine on one worker, or any
//! two workers of `smelter up`), the committer also announces the version here, and a task
//! that found nothing new at its last probe wakes at once and probes again. Nothing is
//! taken from an announcement but "look now": a missed one costs at most a poll interval,
//! a spurious one a probe. Commits from other processes are found by the poll as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Announcements of committed versions, by table URL; cheap to clone, shared by every
/// task (and, under `smelter up`, every worker) of a process.
#[derive(Debug, Clone, Default)]
pub struct CommitSignals {
    tables: Arc<Mutex<HashMap<String, watch::Sender<i64>>>>,
}

impl CommitSignals {
    fn sender(&self, table_url: &str) -> watch::Sender<i64> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .entry(table_url.trim_end_matches('/').to_string())
            .or_insert_with(|| watch::channel(-1).0)
            .clone()
    }

    /// The table at `table_url` now has `version`, committed by this process.
    pub fn announce(&self, table_url: &str, version: i64) {
        self.sender(table_url).send_if_modified(|latest| {
            let newer = version > *latest;
            *latest = (*latest).max(version);
            newer
        });
    }

    /// A receiver that changes whenever a version of the table at `table_url` is announced
    /// after this call.
    pub fn subscribe(&self, table_url: &str) -> Announcements {
        Announcements(self.sender(table_url).subscribe())
    }
}

/// The announcements of one table, as one downstream task waits for them.
#[derive(Debug)]
pub struct Announcements(watch::Receiver<i64>);

impl Announcements {
    /// Returns once a version is announced that was not seen by the last call (at once if
    /// one came in since). Never returns while nothing is announced: the channel's sender
    /// lives as long as the process's [`CommitSignals`].
    pub async fn next(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// What a task that found nothing new does before it probes its upstream's log again:
    /// waits for the next announcement, at most `poll`, and not past `cancel`. After an
    /// announcement it waits `settle` more, for the commits that come with it: an
    /// upstream with several writers (bronze: every ingest task closes its batch on the
    /// same grid) commits them within milliseconds of each other, and a task woken by the
    /// first alone would spend a pass (and a commit) on each. Returns whether an
    /// announcement ended the wait (`false`: the poll, or `cancel`).
    pub async fn wait(
        &mut self,
        poll: Duration,
        settle: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let announced = tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(poll) => false,
            _ = self.next() => true,
        };
        if announced && !settle.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => {},
                _ = tokio::time::sleep(settle) => {},
            }
        }
        announced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn woken(announcements: &mut Announcements) -> bool {
        tokio::time::timeout(Duration::from_millis(50), announcements.next())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_newer_versions_of_its_table_only() {
        let signals = CommitSignals::default();
        let mut bronze = signals.subscribe("file:///data/bronze/events/");
        assert!(!woken(&mut bronze).await, "nothing announced yet");
        signals.announce("file:///data/bronze/events", 3);
        assert!(
            woken(&mut bronze).await,
            "same table, with or without the slash"
        );
        assert!(!woken(&mut bronze).await, "seen once");
        signals.announce("file:///data/silver/events", 9);
        assert!(!woken(&mut bronze).await, "another table");
        signals.announce("file:///data/bronze/events", 2);
        assert!(
            !woken(&mut bronze).await,
            "an older version says nothing new"
        );
        // Announced while the reader was busy: the next wait returns at once.
        signals.announce("file:///data/bronze/events", 4);
        signals.announce("file:///data/bronze/events", 5);
        assert!(woken(&mut bronze).await);
        assert!(!woken(&mut bronze).await);
        let clone = signals.clone();
        clone.announce("file:///data/bronze/events", 6);
        assert!(woken(&mut bronze).await, "clones share their announcements");
    }

    #[tokio::test]
    async fn a_wait_ends_at_an_announcement_or_a_cancel_long_before_its_poll() {
        let signals = CommitSignals::default();
        let mut silver = signals.subscribe("s3://lake/silver/events");
        let cancel = CancellationToken::new();
        let poll = Duration::from_secs(3_600);
        signals.announce("s3://lake/silver/events/", 1);
        let settle = Duration::from_millis(20);
        let waited =
            tokio::time::timeout(Duration::from_secs(5), silver.wait(poll, settle, &cancel));
        assert_eq!(waited.await.ok(), Some(true), "woken by the announcement");
        // A short poll with nothing announced: the wait says so.
        let waited = silver.wait(Duration::from_millis(1), settle, &cancel);
        assert!(!waited.await, "ended by the poll");
        cancel.cancel();
        let waited =
            tokio::time::timeout(Duration::from_secs(5), silver.wait(poll, settle, &cancel));
        assert_eq!(waited.await.ok(), Some(false), "ended by the cancel");
    }
}
