//! How long one worker's commits take, per table: from a commit's first attempt to its
//! outcome, and the part of it spent waiting for the table's commit lock; and how many
//! attempts failed (`smelter_commit_failed_attempts_total`). Histograms with
//! fixed bounds ([`BOUNDS_SECONDS`]), cumulative since the worker started: the worker sends
//! them with each heartbeat and the coordinator serves them as Prometheus histograms
//! (`smelter_commit_duration_seconds`, `smelter_commit_lock_wait_seconds`), so a scrape of
//! the leader sees every worker's.
//!
//! Each data commit also says where its own time went, in its `commitInfo` under
//! [`STAGES_KEY`]: the writer's stages before the commit (ingest's batch, refine's read and
//! decode, gold's refresh) and the commit path's (data files written, commit lock waited
//! for). The log keeps them with the versions they explain, so the latency of any event
//! can be split into its parts after the fact (`smelter bench`, `smelter history`).

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
    /// Attempts that failed and were decided again from the log.
    pub failed_attempts: u64,
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

    /// An attempt to commit to `table` failed (it is decided again from the log).
    pub fn attempt_failed(&self, table: &str) {
        self.update(table, |t| t.failed_attempts += 1);
    }

    /// Every table's histograms as they stand.
    pub fn snapshot(&self) -> BTreeMap<String, TableTimings> {
        self.tables
            .lock()
            .map(|tables| tables.clone())
            .unwrap_or_default()
    }
}

/// The `commitInfo` key of a commit's stage timings: an object of milliseconds per stage,
/// named `<stage>Ms` (`batchMs`, `readMs`, `refineMs`, `quarantineMs`, `refreshMs`,
/// `writeMs`, `lockWaitMs`).
pub const STAGES_KEY: &str = "smelter.timings";

/// Adds `stages` to the stage timings in a commit's `commitInfo` entries (milliseconds to
/// a tenth); an entry already there of the same stage is replaced.
pub fn record_stages(
    metadata: &mut std::collections::HashMap<String, serde_json::Value>,
    stages: &[(&str, Duration)],
) {
    let entry = metadata
        .entry(STAGES_KEY.to_string())
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !entry.is_object() {
        *entry = serde_json::Value::Object(Default::default());
    }
    if let Some(object) = entry.as_object_mut() {
        for (stage, took) in stages {
            let ms = (took.as_secs_f64() * 10_000.0).round() / 10.0;
            object.insert(format!("{stage}Ms"), ms.into());
        }
    }
}

/// The stage timings of a commit's `commitInfo` entry, milliseconds per stage name (the
/// name without `Ms`); empty when it has none.
pub fn stages_of(info: &serde_json::Value) -> std::collections::BTreeMap<String, f64> {
    info.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, ms)| Some((key.strip_suffix("Ms")?.to_string(), ms.as_f64()?)))
        .collect()
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

    #[test]
    fn stages_are_recorded_in_tenths_of_a_millisecond_and_read_back() {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(
            "smelter.quality".to_string(),
            serde_json::json!({"rows_in": 3}),
        );
        record_stages(
            &mut metadata,
            &[
                ("read", Duration::from_micros(12_345)),
                ("refine", Duration::from_millis(7)),
            ],
        );
        record_stages(&mut metadata, &[("write", Duration::from_micros(250))]);
        let recorded = &metadata[STAGES_KEY];
        assert_eq!(
            recorded,
            &serde_json::json!({"readMs": 12.3, "refineMs": 7.0, "writeMs": 0.3})
        );
        let read = stages_of(recorded);
        assert_eq!(read.keys().collect::<Vec<_>>(), ["read", "refine", "write"]);
        assert_eq!(read["read"], 12.3);
        assert!(stages_of(&serde_json::json!("not an object")).is_empty());
        assert_eq!(metadata.len(), 2, "other entries are left as they were");
    }
}
