//! The worker's timing histograms (`smelter_lake::timings`) as the control protocol carries
//! them: commit and lock-wait histograms per table in each heartbeat, and each gold task's
//! refresh histogram in its status report.

use smelter_lake::timings::{BOUNDS_SECONDS, CommitTimings, Histogram};

/// `histogram` as sent.
pub fn histogram(histogram: &Histogram) -> smelter_proto::Histogram {
    smelter_proto::Histogram {
        bounds: BOUNDS_SECONDS.to_vec(),
        counts: histogram.counts.to_vec(),
        sum: histogram.sum_seconds,
        count: histogram.count,
    }
}

/// Every table's commit histograms, as a heartbeat carries them.
pub fn table_timings(timings: &CommitTimings) -> Vec<smelter_proto::TableTimings> {
    timings
        .snapshot()
        .into_iter()
        .map(|(table, t)| smelter_proto::TableTimings {
            table,
            commit_seconds: Some(histogram(&t.commit)),
            lock_wait_seconds: Some(histogram(&t.lock_wait)),
            failed_attempts: t.failed_attempts,
        })
        .collect()
}
