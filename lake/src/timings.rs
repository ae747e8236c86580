//! How long one worker's commits take, per table: from a commit's first attempt to its
//! outcome, and the part of it spent waiting for the table's commit lock. Histograms with
//! fixed bounds ([`BOUNDS_SECONDS`]), cumulative since the worker started: the worker sends
//! them with each heartbeat and the coordinator serves them as Prometheus histograms
//! (`smelter_commit_duration_seconds`, `smelter_commit_lock_wait_seconds`), so a scrape of
//! the leader sees every worker's.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the buckets, seconds (a last bucket holds the rest).
pub const BOUNDS_SECONDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Observations in buckets of [`BOUNDS_SECONDS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last past every bound.
    pub counts: [u64; BOUNDS_SECONDS.len() + 1],
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS_SECONDS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

/// One table's commit histograms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableTimings {
    /// Whole commits, first attempt to outcome.
    pub commit: Histogram,
    /// Waits for the commit lock (one per attempt that took it).
    pub lock_wait: Histogram,
}

/// The commit histograms of every table a worker commits to.
#[derive(Debug, Default)]
pub struct CommitTimings {
    tables: Mutex<BTreeMap<String, TableTimings>>,
}

impl CommitTimings {
    fn update(&self, table: &str, record: impl FnOnce(&mut TableTimings)) {
        if let Ok(mut tables) = self.tables.lock() {
            record(tables.entry(table.to_string()).or_default());
        }
    }

    /// A commit to `table` took `duration`.
    pub fn commit(&self, table: &str, duration: Duration) {
        self.update(table, |t| t.commit.observe(duration));
    }

    /// An attempt waited `duration` for `table`'s commit lock.
    pub fn lock_wait(&self, table: &str, duration: Duration) {
        self.update(table, |t| t.lock_wait.observe(duration));
    }

    /// Every table's histograms as they stand.
    pub fn snapshot(&self) -> BTreeMap<String, TableTimings> {
        self.tables
            .lock()
            .map(|tables| tables.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let timings = CommitTimings::default();
        timings.commit("bronze.events", Duration::from_millis(3));
        timings.commit("bronze.events", Duration::from_millis(10));
        timings.commit("bronze.events", Duration::from_secs(60));
        timings.lock_wait("silver.events", Duration::from_millis(40));
        let all = timings.snapshot();
        let bronze = &all["bronze.events"].commit;
        assert_eq!(bronze.count, 3);
        assert_eq!(
            (bronze.counts[0], bronze.counts[1]),
            (1, 1),
            "10 ms is in the 10 ms bucket"
        );
        assert_eq!(bronze.counts[BOUNDS_SECONDS.len()], 1, "past every bound");
        assert!((bronze.sum_seconds - 60.013).abs() < 1e-9);
        assert_eq!(all["silver.events"].lock_wait.counts[3], 1);
        assert_eq!(all["silver.events"].commit.count, 0);
    }
}
