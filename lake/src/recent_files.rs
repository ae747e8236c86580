//! The rows of the data files this worker committed moments ago, kept in memory so that
//! the tasks downstream on the same worker read them without going to storage.
//!
//! Refine reads each new bronze file right after ingest committed it, and gold each new
//! silver file right after refine did: decoding those files again (decompressing every
//! payload) was most of what refine spent beyond its own work. A committed data file
//! never changes, so its rows as written are its rows as read, exactly when
//!
//! * the commit wrote one file (the rows of several batches in one file, in order), and
//! * every batch, without the partition columns, already had the writer's file schema,
//!   so the writer stored it as given (it converts other batches first).
//!
//! Other commits are not kept, and a file that is not here is read from storage. Entries
//! are dropped oldest first once their Arrow size passes the budget; a reader a few
//! seconds behind finds its files gone and reads them as before.
//!
//! Workers in one process (`smelter up`) share one cache, so refine finds the bronze
//! files every worker's ingest wrote, and the budget is the process's. Workers in a
//! cluster offer what they keep to the others over Flight ([`crate::exchange`]).
//!
//! The cache also counts where downstream reads found their rows ([`Reads`]): in memory,
//! from another worker, or in storage (with the bytes read and the time spent decoding).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::Serialize;
use smelter_common::config::WorkerConfig;

use crate::exchange::Exchange;

/// The rows of recently committed data files, by table and file.
#[derive(Debug, Clone, Default)]
pub struct RecentFiles {
    inner: Arc<Shared>,
    /// This worker's counts (clones count together; see [`RecentFiles::for_worker`]).
    counters: Arc<ReadCounters>,
    /// This worker's part in the exchange, if it takes part.
    exchange: Option<Arc<Exchange>>,
}

#[derive(Debug, Default)]
struct Shared {
    budget: usize,
    files: Mutex<Files>,
}

/// Where the reads of data files by downstream tasks found their rows, since start.
#[derive(Debug, Default)]
pub(crate) struct ReadCounters {
    memory: AtomicU64,
    served: AtomicU64,
    exchanged: AtomicU64,
    exchanged_bytes: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    storage: AtomicU64,
    storage_bytes: AtomicU64,
    decode_micros: AtomicU64,
}

impl ReadCounters {
    pub(crate) fn exchanged(&self, bytes: usize) {
        self.exchanged.fetch_add(1, Ordering::Relaxed);
        self.exchanged_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn storage(&self, bytes: usize, decoding: Duration) {
        self.storage.fetch_add(1, Ordering::Relaxed);
        self.storage_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.decode_micros
            .fetch_add(decoding.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Counts of data file reads by where their rows came from (see [`RecentFiles::reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Reads {
    /// Answered from this process's memory.
    pub memory: u64,
    /// Files this worker sent to others over the exchange.
    pub served: u64,
    /// Answered by another worker over the exchange.
    pub exchanged: u64,
    /// Bytes received over the exchange.
    pub exchanged_bytes: u64,
    /// Exchanged rows refused: their checksum or row count was not the offer's.
    pub rejected: u64,
    /// Exchange fetches that failed or timed out.
    pub failed: u64,
    /// Read from storage (after a miss, a refusal or a failure, or without an offer).
    pub storage: u64,
    /// Bytes read from storage.
    pub storage_bytes: u64,
    /// Time spent decoding Parquet read from storage, in milliseconds.
    pub decode_ms: u64,
}

/// One file's rows, and the IPC messages it is offered as when this worker exchanges.
#[derive(Debug)]
pub struct Kept {
    /// The rows, as the file stores them.
    pub rows: Vec<RecordBatch>,
    /// [`crate::exchange::encode`] of the rows, whose checksum the commit recorded: what
    /// another worker is sent.
    pub messages: Option<Vec<crate::exchange::Message>>,
}

#[derive(Debug, Default)]
struct Files {
    rows: HashMap<String, Arc<Kept>>,
    /// Keys and sizes, oldest first.
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

fn key(table_uri: &str, path: &str) -> String {
    format!("{}/{path}", table_uri.trim_end_matches('/'))
}

impl RecentFiles {
    /// Keeps up to `budget` bytes of rows (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::new(Shared {
                budget,
                ..Default::default()
            }),
            counters: Arc::default(),
            exchange: None,
        }
    }

    /// This cache (its files and budget) with counts of its own, for one of the workers
    /// that share it: each reports its own reads.
    pub fn for_worker(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            counters: Arc::default(),
            exchange: self.exchange.clone(),
        }
    }

    /// This cache, offering what it keeps to other workers and fetching what they offer
    /// through `exchange` (clones share the files, budget and counters).
    pub fn with_exchange(&self, exchange: Exchange) -> Self {
        Self {
            inner: self.inner.clone(),
            counters: self.counters.clone(),
            exchange: Some(Arc::new(exchange)),
        }
    }

    /// This worker's part in the exchange, if it takes part.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_deref()
    }

    pub(crate) fn counters(&self) -> &ReadCounters {
        &self.counters
    }

    /// Where reads found their rows so far.
    pub fn reads(&self) -> Reads {
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Reads {
            memory: load(&c.memory),
            served: load(&c.served),
            exchanged: load(&c.exchanged),
            exchanged_bytes: load(&c.exchanged_bytes),
            rejected: load(&c.rejected),
            failed: load(&c.failed),
            storage: load(&c.storage),
            storage_bytes: load(&c.storage_bytes),
            decode_ms: load(&c.decode_micros) / 1000,
        }
    }

    /// The budget `worker.recent_files_mb` sets.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self::new(
            usize::try_from(config.recent_files_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        )
    }

    /// How many reads were answered from memory.
    pub fn hits(&self) -> u64 {
        self.counters.memory.load(Ordering::Relaxed)
    }

    /// Keeps `batches` as the rows of the file at `path` (relative to the table, as its
    /// log names it) if they are exactly what the file holds: each batch without the
    /// `partition_by` columns must have `file_schema`, the schema the writer encoded.
    pub fn keep(
        &self,
        table_uri: &str,
        path: &str,
        file_schema: &SchemaRef,
        partition_by: &[String],
        batches: &[RecordBatch],
    ) {
        if let Some(rows) = self.stored_rows(file_schema, partition_by, batches) {
            self.keep_rows(table_uri, path, rows, None);
        }
    }

    /// `batches` as the file the writer makes of them stores them (without the
    /// `partition_by` columns), if each has `file_schema` then and this cache would keep
    /// them (a budget, and room for them in it).
    pub(crate) fn stored_rows(
        &self,
        file_schema: &SchemaRef,
        partition_by: &[String],
        batches: &[RecordBatch],
    ) -> Option<Vec<RecordBatch>> {
        if self.inner.budget == 0 {
            return None;
        }
        let mut rows = Vec::with_capacity(batches.len());
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let columns: Vec<usize> = (0..batch.num_columns())
                .filter(|&i| !partition_by.contains(batch.schema_ref().field(i).name()))
                .collect();
            let stored = batch.project(&columns).ok()?;
            if stored.schema_ref() != file_schema {
                return None;
            }
            rows.push(stored);
        }
        let size: usize = rows.iter().map(RecordBatch::get_array_memory_size).sum();
        (size <= self.inner.budget).then_some(rows)
    }

    /// Keeps `rows` ([`RecentFiles::stored_rows`]) as the rows of the file at `path`, with
    /// the `messages` they are offered as, if any.
    pub(crate) fn keep_rows(
        &self,
        table_uri: &str,
        path: &str,
        rows: Vec<RecordBatch>,
        messages: Option<Vec<crate::exchange::Message>>,
    ) {
        let size: usize = rows
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + messages
                .iter()
                .flatten()
                .map(|m| m.header.len() + m.body.len())
                .sum::<usize>();
        let key = key(table_uri, path);
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        if files
            .rows
            .insert(key.clone(), Arc::new(Kept { rows, messages }))
            .is_some()
        {
            return;
        }
        files.order.push_back((key, size));
        files.bytes += size;
        while files.bytes > self.inner.budget {
            let Some((oldest, size)) = files.order.pop_front() else {
                break;
            };
            files.rows.remove(&oldest);
            files.bytes -= size;
        }
    }

    /// The rows of the file at `path` with only the `columns` named (all when `None`),
    /// as reading the file would give them, if they are here.
    pub fn get(
        &self,
        table_uri: &str,
        path: &str,
        columns: Option<&HashSet<String>>,
    ) -> Option<Vec<RecordBatch>> {
        let kept = self.lookup(table_uri, path)?;
        let projected = project(&kept.rows, columns)?;
        self.counters.memory.fetch_add(1, Ordering::Relaxed);
        Some(projected)
    }

    /// What is kept of the file at `path`, for another worker that asked for its rows over
    /// the exchange (counted as served, not as a read).
    pub fn serve(&self, table_uri: &str, path: &str) -> Option<Arc<Kept>> {
        let kept = self.lookup(table_uri, path)?;
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        Some(kept)
    }

    fn lookup(&self, table_uri: &str, path: &str) -> Option<Arc<Kept>> {
        let files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        files.rows.get(&key(table_uri, path)).cloned()
    }
}

/// `rows` with only the `columns` named (all when `None`).
pub(crate) fn project(
    rows: &[RecordBatch],
    columns: Option<&HashSet<String>>,
) -> Option<Vec<RecordBatch>> {
    rows.iter()
        .map(|batch| match columns {
            None => Some(batch.clone()),
            Some(columns) => {
                let keep: Vec<usize> = (0..batch.num_columns())
                    .filter(|&i| columns.contains(batch.schema_ref().field(i).name()))
                    .collect();
                batch.project(&keep).ok()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use arrow::compute::concat_batches;

    use super::RecentFiles;
    use crate::changes;
    use crate::commit::{CommitEnv, CommitOutcome, WriteMode, commit};
    use crate::location::TableStore;
    use crate::testing::{DAY_COLUMN, flagged_positions, positions_schema};

    /// Offsets `from..from + n` of partition 1, every seventh flagged with an error.
    fn records(from: i64, n: i64) -> RecordBatch {
        flagged_positions(1, from..from + n, 7)
    }

    /// Appends `batches` to `bronze.events` in one commit; the files it added.
    async fn append(
        table: &mut deltalake::DeltaTable,
        env: &CommitEnv,
        by: &[String],
        batches: Vec<RecordBatch>,
    ) -> Vec<changes::DataFile> {
        let name = "bronze.events";
        let outcome = commit(table, name, batches, WriteMode::Append, by, vec![], env).await;
        let Ok(CommitOutcome::Committed { version }) = outcome else {
            panic!("not committed: {outcome:?}");
        };
        changes::range(table, name, version, version)
            .await
            .unwrap()
            .added
    }

    /// Rows read from memory are the rows read from the file: same schema, same values,
    /// with and without a projection. Only single-file commits are kept.
    #[tokio::test]
    async fn kept_rows_read_as_the_file_does() {
        let env = CommitEnv {
            recent: RecentFiles::new(64 << 20),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let by = [DAY_COLUMN.to_string()];
        let mut table = store
            .open_or_create("bronze.events", &positions_schema(), &by, &env)
            .await
            .unwrap();
        // Two batches into one file (one partition: one day).
        let batches = vec![records(0, 300), records(300, 200)];
        let added = append(&mut table, &env, &by, batches).await;
        assert_eq!(added.len(), 1);
        let file = &added[0];
        let projection: HashSet<String> = ["offset", "payload", "error"]
            .into_iter()
            .map(String::from)
            .collect();
        for columns in [None, Some(&projection)] {
            let disk = changes::read(
                &table,
                "bronze.events",
                file,
                columns,
                &RecentFiles::default(),
            )
            .await
            .unwrap();
            let hits = env.recent.hits();
            let memory = changes::read(&table, "bronze.events", file, columns, &env.recent)
                .await
                .unwrap();
            assert_eq!(env.recent.hits(), hits + 1, "answered from memory");
            let schema = disk[0].schema();
            assert_eq!(memory[0].schema().fields(), schema.fields());
            assert_eq!(
                concat_batches(&schema, &memory).unwrap(),
                concat_batches(&schema, &disk).unwrap()
            );
        }
        // Rows of two days make two files: not kept.
        let two_days = records(500, 10);
        let mut columns = two_days.columns().to_vec();
        let date = positions_schema().index_of(DAY_COLUMN).unwrap();
        columns[date] = Arc::new(arrow::array::Date32Array::from_iter_values(
            (0..10).map(|i| 20_000 + i % 2),
        ));
        let two_days = RecordBatch::try_new(two_days.schema(), columns).unwrap();
        let added = append(&mut table, &env, &by, vec![two_days]).await;
        assert_eq!(added.len(), 2);
        let hits = env.recent.hits();
        for file in &added {
            let rows = changes::read(&table, "bronze.events", file, None, &env.recent)
                .await
                .unwrap();
            assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
        }
        assert_eq!(env.recent.hits(), hits, "read from storage");
    }

    /// The oldest files go first once the budget is spent.
    #[test]
    fn the_oldest_files_leave_first() {
        let batch = records(0, 100);
        let size = batch.get_array_memory_size();
        let schema = batch.schema();
        let recent = RecentFiles::new(size * 2 + size / 2);
        for path in ["a", "b", "c"] {
            recent.keep(
                "file:///t",
                path,
                &schema,
                &[],
                std::slice::from_ref(&batch),
            );
        }
        assert!(recent.get("file:///t", "a", None).is_none());
        assert!(recent.get("file:///t", "b", None).is_some());
        assert!(recent.get("file:///t", "c", None).is_some());
        assert!(
            recent.get("file:///u", "c", None).is_none(),
            "another table"
        );
        // A batch not of the file's schema is not kept.
        let other = batch.project(&[0, 1]).unwrap();
        recent.keep("file:///t", "d", &schema, &[], &[other]);
        assert!(recent.get("file:///t", "d", None).is_none());
    }

    /// The workers of one process hold clones of one cache: a file one of them kept is
    /// there for the others, and they spend one budget.
    #[test]
    fn clones_share_files_and_budget() {
        let batch = records(0, 1_000);
        let schema = batch.schema();
        let config = smelter_common::config::WorkerConfig {
            recent_files_mb: 1,
            ..Default::default()
        };
        let ingest_side = RecentFiles::from_config(&config);
        let refine_side = ingest_side.clone();
        ingest_side.keep("file:///t", "a", &schema, &[], std::slice::from_ref(&batch));
        assert!(refine_side.get("file:///t", "a", None).is_some());
        assert_eq!(ingest_side.hits(), 1);
        // 1 MB holds this batch a few times over, not a hundred times.
        let size = batch.get_array_memory_size();
        assert!(size * 4 < 1 << 20 && size * 100 > 1 << 20, "{size} bytes");
        for i in 0..100 {
            refine_side.keep(
                "file:///t",
                &format!("b{i}"),
                &schema,
                &[],
                std::slice::from_ref(&batch),
            );
        }
        assert!(ingest_side.get("file:///t", "a", None).is_none());
        assert!(ingest_side.get("file:///t", "b99", None).is_some());
    }
}
