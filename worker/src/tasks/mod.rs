//! The four kinds of pipeline task (ingest, refine, aggregate, maintain) and what they
//! share.
//!
//! A task is a loop owned by one worker: it reads upstream from where the target table's
//! txn versions say it stopped, commits, and repeats until cancelled. Tasks keep no state
//! that matters across restarts — that is all in the Delta log — so the coordinator can
//! move them freely. Each task publishes its [`Progress`] for status reports.

pub mod aggregate;
pub mod drained;
pub mod ingest;
pub mod maintain;
pub mod merge;
pub mod refine;
pub mod schemas;
pub mod silver_schema;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use smelter_common::config::WorkerConfig;
use smelter_common::spec::{PipelineSpec, TableSpec};
use smelter_proto::{TaskState, TaskStatusReport};
use tokio::sync::Notify;

use smelter_lake::TableStore;
use smelter_lake::describe::{Description, tombstones_for};

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
    pub commits: Arc<smelter_lake::CommitEnv>,
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

    /// What the catalog says of `table` (one of the pipeline's tables, or a silver
    /// table's quarantine), as its Delta metadata keeps it (`smelter_lake::describe`).
    pub fn catalog_description(&self, table: &str) -> Description {
        if let Some(spec) = self.pipeline.tables.get(table) {
            return Description {
                owner: spec.owner.clone(),
                tags: spec.tags.clone(),
                description: spec.description.clone(),
                columns: spec.column_descriptions.clone(),
                keys: match &spec.merge {
                    Some(merge) => merge.keys.clone(),
                    None => spec.keys.clone(),
                },
                sql: spec.sql.clone(),
                history: spec.retention.history,
                tombstones: spec.vacuum_after().map(tombstones_for),
                change_data_feed: spec.change_data_feed,
            };
        }
        let silver = self
            .pipeline
            .tables
            .iter()
            .find(|(name, _)| TableSpec::quarantine_name(name) == table);
        match silver {
            Some((_, spec)) => Description {
                owner: spec.owner.clone(),
                tags: spec.tags.clone(),
                description: Some(TableSpec::quarantine_description(&spec.from)),
                history: spec.retention.history,
                tombstones: spec.vacuum_after().map(tombstones_for),
                ..Description::default()
            },
            None => match self
                .pipeline
                .tables
                .iter()
                .find(|(name, _)| TableSpec::tombstones_name(name) == table)
            {
                Some((name, spec)) => Description {
                    owner: spec.owner.clone(),
                    tags: spec.tags.clone(),
                    description: Some(TableSpec::tombstones_description(name)),
                    history: spec.retention.history,
                    tombstones: spec.vacuum_after().map(tombstones_for),
                    ..Description::default()
                },
                None => Description::default(),
            },
        }
    }

    /// Opens one of the pipeline's tables, creating it (with its catalog description)
    /// if it does not exist yet.
    pub async fn open_or_create(
        &self,
        table: &str,
        schema: &arrow::datatypes::SchemaRef,
        partition_by: &[String],
    ) -> crate::Result<deltalake::DeltaTable> {
        let described = self.catalog_description(table);
        Ok(self
            .tables
            .open_or_create_described(table, schema, partition_by, &described, &self.commits)
            .await?)
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
///
/// A change of state (starting, running, backoff, ...; not running <-> idle) wakes
/// `changed`, so the reporter sends it at once instead of at its next tick: after a
/// rebalance the coordinator (and `smelter status`) sees moved tasks running as soon as
/// they are.
#[derive(Clone, Default)]
pub struct Progress {
    report: Arc<Mutex<(TaskStatusReport, BTreeMap<i32, PartitionProgress>)>>,
    changed: Arc<Notify>,
}

impl Progress {
    /// Progress whose state changes wake `changed`.
    pub fn notifying(changed: Arc<Notify>) -> Self {
        Self {
            report: Arc::default(),
            changed,
        }
    }

    /// Applies `f` to the report.
    pub fn update(&self, f: impl FnOnce(&mut TaskStatusReport)) {
        let mut guard = self.report.lock().unwrap_or_else(|e| e.into_inner());
        let before = guard.0.state();
        f(&mut guard.0);
        let after = guard.0.state();
        // Running <-> idle flips with every poll that finds nothing; the tick reports those.
        let busy_or_idle = |s| matches!(s, TaskState::Running | TaskState::Idle);
        if after != before && !(busy_or_idle(before) && busy_or_idle(after)) {
            self.changed.notify_one();
        }
    }

    /// Applies `f` to one partition's figures.
    pub fn update_partition(&self, partition: i32, f: impl FnOnce(&mut PartitionProgress)) {
        let mut guard = self.report.lock().unwrap_or_else(|e| e.into_inner());
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
        let guard = self.report.lock().unwrap_or_else(|e| e.into_inner());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(changed: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), changed.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn state_changes_wake_the_reporter_but_busy_idle_flips_do_not() {
        let changed = Arc::new(Notify::new());
        let progress = Progress::notifying(Arc::clone(&changed));
        progress.set_state(TaskState::Starting);
        assert!(woken(&changed).await, "unspecified -> starting");
        progress.set_state(TaskState::Running);
        assert!(woken(&changed).await, "starting -> running");
        progress.set_state(TaskState::Idle);
        progress.set_state(TaskState::Running);
        progress.committed(3, 10, 10);
        assert!(
            !woken(&changed).await,
            "running <-> idle and commits wait for the tick"
        );
        progress.update(|r| {
            r.state = TaskState::Backoff as i32;
            r.error = "broker down".into();
        });
        assert!(woken(&changed).await, "running -> backoff");
        progress.set_state(TaskState::Backoff);
        assert!(!woken(&changed).await, "no change, no wake");
        assert_eq!(progress.snapshot(None).error, "broker down");
    }
}
