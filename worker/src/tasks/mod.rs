//! The three kinds of pipeline task and what they share.
//!
//! A task is a loop owned by one worker: it reads upstream from where the target table's
//! txn versions say it stopped, commits, and repeats until cancelled. Tasks keep no state
//! that matters across restarts — that is all in the Delta log — so the coordinator can
//! move them freely. Each task publishes its [`Progress`] for status reports.

pub mod aggregate;
pub mod drained;
pub mod ingest;
pub mod refine;

use std::sync::{Arc, Mutex};

use smelter_common::config::WorkerConfig;
use smelter_common::spec::{PipelineSpec, TableSpec};
use smelter_proto::{TaskState, TaskStatusReport};

use crate::tables::TableStore;

/// What every task needs from its worker.
#[derive(Clone)]
pub struct TaskEnv {
    /// Where tables live.
    pub tables: TableStore,
    /// Batching and polling settings.
    pub config: WorkerConfig,
    /// The pipeline the task belongs to.
    pub pipeline: Arc<PipelineSpec>,
    /// Commit locks and crash hooks, shared by the worker's tasks.
    pub commits: Arc<crate::tables::CommitEnv>,
}

impl TaskEnv {
    /// The spec of one of the pipeline's tables; an error names it if it is not declared.
    pub fn table_spec(&self, table: &str) -> crate::Result<TableSpec> {
        self.pipeline
            .tables
            .get(table)
            .cloned()
            .ok_or_else(|| crate::WorkerError::InvalidSpec {
                origin: self.pipeline.pipeline.clone(),
                field: format!("tables.{table}"),
                message: "assigned, but not declared in the pipeline".into(),
            })
    }
}

/// Ingest figures of one source partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Rows of this partition committed since the task started.
    pub rows: u64,
    /// Last offset committed to bronze, -1 if none yet.
    pub committed_offset: i64,
    /// Records available but not yet read.
    pub lag: i64,
}

/// Progress of one task, shared between the task and the status reporter. Ingest tasks
/// also keep figures per partition, reported under each partition's task id.
#[derive(Clone, Default)]
pub struct Progress(
    Arc<
        Mutex<(
            TaskStatusReport,
            std::collections::BTreeMap<i32, PartitionProgress>,
        )>,
    >,
);

impl Progress {
    /// Applies `f` to the report.
    pub fn update(&self, f: impl FnOnce(&mut TaskStatusReport)) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard.0);
    }

    /// Applies `f` to one partition's figures.
    pub fn update_partition(&self, partition: i32, f: impl FnOnce(&mut PartitionProgress)) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = guard.1.entry(partition).or_insert(PartitionProgress {
            committed_offset: -1,
            ..Default::default()
        });
        f(entry);
    }

    /// Sets the task state (and clears the error unless failing or backing off).
    pub fn set_state(&self, state: TaskState) {
        self.update(|r| {
            r.state = state as i32;
            if !matches!(state, TaskState::Failed | TaskState::Backoff) {
                r.error.clear();
            }
        });
    }

    /// Records a commit.
    pub fn committed(&self, version: i64, rows: u64, table_rows: u64) {
        self.update(|r| {
            r.table_version = version;
            r.rows_committed += rows;
            r.table_rows = table_rows;
            r.last_commit_unix_ms = chrono::Utc::now().timestamp_millis();
        });
    }

    /// A copy of the current report; with `partition`, that partition's figures replace the
    /// task-wide rows, lag and offset.
    pub fn snapshot(&self, partition: Option<i32>) -> TaskStatusReport {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = guard.0.clone();
        report.committed_offset = -1;
        if let Some(p) = partition.and_then(|p| guard.1.get(&p)) {
            report.rows_committed = p.rows;
            report.lag = p.lag;
            report.committed_offset = p.committed_offset;
        }
        report
    }
}

/// The app id of a downstream task's txn actions: `"<table>/<upstream table>"`.
pub fn downstream_app_id(table: &str, upstream: &str) -> String {
    format!("{table}/{upstream}")
}
